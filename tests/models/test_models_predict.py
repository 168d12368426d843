"""SegmentationModel.predict through analytic networks; bf16 vs fp32; device choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import plan_spec, torch_loaded
from wsi_segment.errors import ConfigError
from wsi_segment.models.bundle import ModelMeta, SegmentationModel
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.cpu import cpu_flags
from wsi_segment.models.device import cuda_start_error, fit_batch_size, pick_device
from wsi_segment.models.model_files import BuiltModel
from wsi_segment.models.runtimes.executor import TORCH_DTYPES
from wsi_segment.models.runtimes.select import open_runtime
from wsi_segment.models.segmenter import build_segmenter

META = ModelMeta(
    name="analytic",
    classes=["a", "b"],
    colors=[(255, 0, 0), (0, 0, 255)],
    tile_size=4,
    normalisation={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    gate_epsilon=0.3,
)
W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def _analytic() -> SegmentationModel:
    cls_conv = nn.Conv2d(3, 2, 1, bias=False)
    seg_conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        cls_conv.weight.copy_(W.view(2, 3, 1, 1))
        seg_conv.weight.copy_(2 * W.view(2, 3, 1, 1))
    classifier = nn.Sequential(cls_conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SegmentationModel(classifier, seg_conv, META).to_device("cpu")


def test_predict_equals_formula() -> None:
    tiles = torch.randint(
        0, 256, (3, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    tiles[0, 0] = 255  # red tile: class a sure; blue channel decides class b
    tiles[1, 2] = 255  # blue saturated: b's logit strongly negative -> gated
    x = (tiles.float() / 255 - 0.5) / 0.5
    cls = torch.sigmoid(torch.einsum("kc,nchw->nk", W, x) / 16)
    seg = torch.softmax(2 * torch.einsum("kc,nchw->nkhw", W, x), dim=1)
    seg_p, cls_p = _analytic().predict(tiles, gate=False)
    assert seg_p.dtype == cls_p.dtype == torch.float32 and seg_p.device.type == "cpu"
    torch.testing.assert_close(cls_p, cls)
    torch.testing.assert_close(seg_p, seg)
    gated, _ = _analytic().predict(tiles)
    torch.testing.assert_close(gated, seg * (cls > 0.3)[:, :, None, None].float())
    assert (cls <= 0.3).any(), "the test must gate something"
    # float input in [0, 1] takes the same path
    torch.testing.assert_close(_analytic().predict(tiles.float() / 255, gate=False)[0], seg)


def test_bf16_autocast_agrees_with_fp32() -> None:
    """bf16 + channels_last vs fp32 on a small real model: max |dp| <= 0.02, mean <= 0.002."""
    torch.manual_seed(0)
    model = SegmentationModel(
        build_classifier("resnet10t", "pda", 2),
        build_segmenter("tu-resnet10t", 2, decoder_channels=32),
        META,
    )
    tiles = torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    seg32, cls32 = model.to_device("cpu").predict(tiles, gate=False)
    opened = open_runtime(BuiltModel(model), plan_spec("bf16"))
    assert opened.precision == "bf16"
    assert opened.report()["reason"] == "bf16: asked for (--precision bf16)"
    assert model.segmenter.net.encoder.model.conv1[0].weight.is_contiguous(
        memory_format=torch.channels_last
    )
    seg16, cls16 = model.predict(tiles, gate=False, dtype=TORCH_DTYPES[opened.precision])
    assert seg16.dtype == torch.float32 and seg16.is_contiguous()
    assert (seg16 - seg32).abs().max() <= 0.02 and (seg16 - seg32).abs().mean() <= 0.002
    assert (cls16 - cls32).abs().max() <= 0.02


def test_device_choice() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA GPU") as refused:
            pick_device("cuda")
        assert cuda_start_error() in str(refused.value)  # torch's own reason, named
    with pytest.raises(ConfigError, match="unknown device"):
        pick_device("tpu")


def test_cpu_flags_parse(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    assert {"amx_bf16", "sse2"} <= cpu_flags(str(info))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_fit_batch_size_leaves_headroom_and_never_exceeds_the_request() -> None:
    mib = 1 << 20
    # 1000 MiB free, 80 % usable, 30 MiB per tile -> 26 tiles fit; a request of 16 stays 16
    assert fit_batch_size(64, 1000 * mib, 30 * mib) == 26
    assert fit_batch_size(16, 1000 * mib, 30 * mib) == 16
    assert fit_batch_size(64, 10 * mib, 30 * mib) == 1  # never 0: one tile is tried
    assert fit_batch_size(8, 1000 * mib, 0) == 8  # nothing measured: the request stands
    assert fit_batch_size(64, 1000 * mib, 30 * mib, headroom=0.5) == 16


def test_batch_size_on_the_cpu_is_the_request() -> None:
    """No probe on the CPU (host memory is not the limit there); the GPU path probes."""
    loaded = torch_loaded(_analytic())
    assert loaded.batch_size(32, 16) == 16 and loaded.batch_size(32, 7) == 7
    assert loaded.batch_caps == {}
