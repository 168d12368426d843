"""Pretrained encoder weights: local files written here (never a download), loaded exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from wsi_segment.errors import ConfigError
from wsi_segment.models import pretrained
from wsi_segment.models.checksum import file_sha256
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.pretrained import (
    canonical,
    hub_reachable,
    is_file_source,
    load_pretrained,
)
from wsi_segment.models.segmenter import build_segmenter


def _source_weights(seed: int = 3) -> dict[str, torch.Tensor]:
    """A full timm resnet10t (with its fc) whose tensors differ from any fresh build."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet10t")
    with torch.no_grad():  # BatchNorm statistics too, so running stats are checked as well
        for name, t in model.state_dict().items():
            if t.is_floating_point() and "running" in name:
                t.copy_(torch.rand_like(t) + 0.5)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


def test_safetensors_loads_into_the_classifier_encoder_exactly(tmp_path: Path) -> None:
    weights = _source_weights()
    f = tmp_path / "r10t.safetensors"
    save_file({f"module.{k}": v for k, v in weights.items()}, str(f))  # a DataParallel save
    torch.manual_seed(0)
    clf = build_classifier("resnet10t", "pda", 4)
    head_before = clf.head.fc.weight.clone()

    report = load_pretrained(clf.backbone, str(f))

    got = clf.backbone.body.state_dict()
    assert set(got) == {k for k in weights if not k.startswith("fc.")}
    for key, value in got.items():
        assert torch.equal(value, weights[key]), key
    assert torch.equal(clf.head.fc.weight, head_before)  # the new head is left as built
    assert (report.kind, report.matched, report.missing) == ("file", 84, [])
    assert report.unexpected == ["module.fc.bias", "module.fc.weight"]
    assert report.sha256 == file_sha256(f)
    assert "84 tensors matched, 0 missing, 2 unexpected" in report.summary("classifier encoder")


def test_torch_checkpoint_loads_into_a_tu_segmenter_encoder(tmp_path: Path) -> None:
    """A PyTorch checkpoint ({"state_dict": {"encoder.*"}}) onto smp's `tu-` names (`model.*`)."""
    weights = _source_weights(seed=4)
    f = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"encoder.{k}": v for k, v in weights.items()}}, f)
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=16)

    report = load_pretrained(seg.net.encoder, str(f))

    for key, value in seg.net.encoder.state_dict().items():
        assert key.startswith("model.") and torch.equal(value, weights[key[len("model.") :]]), key
    assert (report.matched, report.missing, len(report.unexpected)) == (84, [], 2)


def test_shape_mismatch_is_reported_not_loaded(tmp_path: Path) -> None:
    weights = _source_weights()
    weights["conv1.0.weight"] = torch.zeros(5, 3, 3, 3)
    f = tmp_path / "w.safetensors"
    save_file(weights, str(f))
    clf = build_classifier("resnet10t", "cam", 4)
    before = clf.backbone.body.conv1[0].weight.clone()
    report = load_pretrained(clf.backbone, str(f))
    assert report.missing == ["body.conv1.0.weight"]
    assert report.mismatched == ["conv1.0.weight (5, 3, 3, 3) vs (24, 3, 3, 3)"]
    assert torch.equal(clf.backbone.body.conv1[0].weight, before)


def test_nothing_matching_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "other.safetensors"
    save_file({"decoder.proj.weight": torch.ones(2, 2)}, str(f))
    with pytest.raises(ConfigError, match=r"other\.safetensors: none of its 1 tensors matches"):
        load_pretrained(build_classifier("resnet10t", "cam", 4).backbone, str(f))


class _Payload:
    """An arbitrary object: unpickling it would run code, so loading must refuse it."""


def test_a_pickle_with_code_is_refused_not_unpickled(tmp_path: Path) -> None:
    f = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload()}, f)
    with pytest.raises(ConfigError, match=r"evil\.pt: not a readable weights file"):
        load_pretrained(build_classifier("resnet10t", "cam", 4).backbone, str(f))


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.safetensors: pretrained weights file not found"):
        load_pretrained(torch.nn.Linear(2, 2), str(tmp_path / "nope.safetensors"))


def test_a_timm_name_offline_is_one_error_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never download
    with pytest.raises(ConfigError) as err:
        load_pretrained(torch.nn.Linear(2, 2), "resnet10t")
    assert "https://huggingface.co/timm/resnet10t.c3_in1k" in str(err.value)
    assert "--pretrained" in str(err.value) and "HF_HUB_OFFLINE is set" in str(err.value)
    assert "\n" not in str(err.value)  # the CLI prints it as one `error:` line


def test_an_unreachable_hub_fails_at_once_from_the_cache_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No HF_HUB_OFFLINE, but the endpoint does not answer: the Hub client is put offline for
    the call (timm's cache still serves), so no retries, and the error says why."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pretrained, "hub_reachable", lambda: False)
    seen: list[bool] = []

    def create_model(name: str, pretrained: bool) -> torch.nn.Module:
        seen.append(huggingface_hub.constants.HF_HUB_OFFLINE)
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache.\nSecond line")

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(ConfigError) as err:
        load_pretrained(torch.nn.Linear(2, 2), "resnet10t")
    assert seen == [True] and huggingface_hub.constants.HF_HUB_OFFLINE is False
    message = str(err.value)
    assert "(LocalEntryNotFoundError: not in the cache)" in message and "\n" not in message
    assert "https://huggingface.co is not reachable from this machine" in message


def test_hub_reachable_tries_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listening local port is reachable, a closed one not; behind a proxy the proxy decides."""
    import socket

    import huggingface_hub.constants

    for var in pretrained.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub_reachable(timeout=2.0) is True
    assert hub_reachable(timeout=2.0) is False  # the same port, closed
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_reachable(timeout=2.0) is True


def test_sources_and_key_names() -> None:
    assert canonical("module.encoder.model.layer1.0.conv1.weight") == "layer1.0.conv1.weight"
    assert canonical("backbone.body.bn1.bias") == "bn1.bias"
    assert is_file_source("weights.pth") and is_file_source("/abs/w")
    assert not is_file_source("resnet50.a1_in1k") and not is_file_source("hf-hub:timm/resnet18")


def _whole_deeplab(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """An smp DeepLabV3+'s state dict (`encoder.*`, `decoder.*`, `segmentation_head.*`) whose
    tensors differ from any fresh build, BatchNorm statistics included."""
    torch.manual_seed(seed)
    net = build_segmenter("tu-resnet10t", num_classes, decoder_channels=16).net
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + (0.5 if "running_var" in name else -0.5))
    return {k: v.clone().contiguous() for k, v in net.state_dict().items()}


def test_a_whole_deeplab_starts_encoder_aspp_and_decoder(tmp_path: Path) -> None:
    """A safetensors file of a whole 6-class DeepLabV3+ into a 4-class one: every tensor but
    the last layer's is copied; the last layer (another class count) is reported and kept."""
    weights = _whole_deeplab(6, seed=5)
    f = tmp_path / "deeplab.safetensors"
    save_file(weights, str(f))
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=16)
    head_before = {k: v.clone() for k, v in seg.net.segmentation_head.state_dict().items()}

    report = load_pretrained(seg.net.encoder, str(f), whole=seg.net)

    state = seg.net.state_dict()
    last = {"segmentation_head.0.weight", "segmentation_head.0.bias"}
    assert {k.split(".")[0] for k in state} == {"encoder", "decoder", "segmentation_head"}
    for key in set(state) - last:
        assert torch.equal(state[key], weights[key]), key
    for key, value in seg.net.segmentation_head.state_dict().items():
        assert torch.equal(value, head_before[key])  # left as built
    assert (report.scope, report.matched, report.unexpected) == ("model", len(state) - 2, [])
    assert report.missing == sorted(last)
    assert sorted(report.mismatched) == [
        "segmentation_head.0.bias (6,) vs (4,)",
        "segmentation_head.0.weight (6, 16, 1, 1) vs (4, 16, 1, 1)",
    ]
    assert "(whole DeepLabV3+: encoder, ASPP, decoder)" in report.summary("segmenter encoder")
    assert report.as_dict()["scope"] == "model"


def test_a_whole_deeplab_checkpoint_of_the_same_classes_loads_all(tmp_path: Path) -> None:
    """A PyTorch checkpoint (`.pth.tar`, read with weights_only=True) of a DataParallel-wrapped
    model with the same class count: every tensor, the last layer too."""
    weights = _whole_deeplab(4, seed=6)
    f = tmp_path / "deeplab.pth.tar"
    wrapped = {f"module.{k}": v for k, v in weights.items()}
    torch.save({"epoch": 30, "best_pred": 0.7, "state_dict": wrapped}, f)
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=16)
    report = load_pretrained(seg.net.encoder, str(f), whole=seg.net)
    state = seg.net.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in state)
    assert (report.scope, report.matched, report.missing, report.mismatched) == (
        "model", len(state), [], []
    )  # fmt: skip
    # without `whole` (the classifier's door) the same file gives the encoder alone
    enc_only = build_segmenter("tu-resnet10t", 4, decoder_channels=16)
    report = load_pretrained(enc_only.net.encoder, str(f))
    assert report.scope == "encoder" and report.unexpected[0].startswith("module.decoder.")
    enc = enc_only.net.encoder.state_dict()
    assert all(torch.equal(v, weights[f"encoder.{k}"]) for k, v in enc.items())


def _official_checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A `deeplab-resnet.pth.tar` as the official code saves it (`{"epoch", "state_dict",
    "optimizer", "best_pred"}`): the backbone under `backbone.*` (here a resnet10t's names),
    then its own ASPP (`aspp.*`) and decoder (`decoder.conv1`, `decoder.last_conv.*`)."""
    torch.manual_seed(seed)
    backbone = {f"backbone.{k}": v for k, v in _source_weights(seed).items() if "fc" not in k}
    own = {
        "aspp.aspp1.atrous_conv.weight": torch.randn(256, 512, 1, 1),
        "aspp.aspp1.bn.weight": torch.rand(256),
        "aspp.global_avg_pool.1.weight": torch.randn(256, 512, 1, 1),
        "aspp.conv1.weight": torch.randn(256, 1280, 1, 1),
        "decoder.conv1.weight": torch.randn(48, 64, 1, 1),
        "decoder.last_conv.0.weight": torch.randn(256, 304, 3, 3),
        "decoder.last_conv.8.weight": torch.randn(4, 256, 1, 1),
        "decoder.last_conv.8.bias": torch.randn(4),
    }
    state = {**backbone, **own}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]}
    torch.save({"epoch": 29, "state_dict": state, "optimizer": optimizer, "best_pred": 0.71}, path)
    return state


def test_an_official_deeplab_checkpoint_says_only_its_backbone_loaded(tmp_path: Path) -> None:
    """Its ASPP and decoder have another layout than smp's: the backbone loads into the
    encoder, the rest is unexpected, and neither the report nor model.json's record call it
    a whole DeepLabV3+."""
    f = tmp_path / "deeplab-resnet.pth.tar"
    state = _official_checkpoint(f, seed=8)
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=16)
    decoder_before = {k: v.clone() for k, v in seg.net.decoder.state_dict().items()}

    report = load_pretrained(seg.net.encoder, str(f), whole=seg.net)

    backbone = [k for k in state if k.startswith("backbone.")]
    assert (report.scope, report.whole_file, report.matched) == ("encoder", True, len(backbone))
    assert report.unexpected == sorted(k for k in state if not k.startswith("backbone."))
    enc = seg.net.encoder.state_dict()
    assert all(torch.equal(v, state[f"backbone.{canonical(k)}"]) for k, v in enc.items())
    assert all(torch.equal(v, decoder_before[k]) for k, v in seg.net.decoder.state_dict().items())
    line = report.summary("segmenter encoder")
    assert "whole DeepLabV3+" not in line
    assert "only its encoder loaded" in line and "start fresh" in line
    assert f"{len(backbone)} tensors matched" in line
    assert report.as_dict()["scope"] == "encoder" and report.as_dict()["whole_file"] is True
