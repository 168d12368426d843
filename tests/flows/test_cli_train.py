"""`wsi-segment train` on a tiny synthetic dataset, then `wsi-segment evaluate` on the real sample."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from wsi_segment.flows.cli import build_parser, main
from wsi_segment.flows.cli_train import config_from_args
from wsi_segment.models.bundle import load_model
from wsi_segment.models.checksum import file_sha256
from wsi_segment.pipeline.training.work_folder import FORMAT_KEY, TRAINING_FORMAT
from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "luad-histoseg-sample"
TINY = [
    "--encoder", "resnet10t", "--seg-encoder", "resnet10t", "--decoder-channels", "32",
    "--epochs", "1", "--seg-epochs", "1", "--batch-size", "4", "--device", "cpu", "--fp16",
]  # fmt: skip


def _finite(result: dict) -> bool:
    return all(math.isfinite(result[k]) and 0 <= result[k] <= 1 for k in ("miou", "fwiou", "acc"))


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic_dataset(tmp_path / "data", SyntheticSpec(8, 2, 2, 64, seed=7))
    out = tmp_path / "model"
    extra = ["--lr-schedule", "constant", "--classifier-output-stride", "8", "--dropout", "0.3"]
    extra += ["--pda-schedule", "official", "--pda-sigma", "0.9", "--pda-warmup", "0"]
    assert main(["train", "--data", str(data), "--out", str(out), *TINY, *extra]) == 0
    model = load_model(out)
    assert model.meta.classes == ["TE", "NEC", "LYM", "TAS"]
    assert model.meta.colors[2] == (65, 105, 225)
    doc = json.loads((out / "model.json").read_text())
    assert doc["weights"]["dtype"] == "float16"
    assert doc["provenance"]["train_patches"] == 8
    assert doc["provenance"]["classifier"]["lr_schedule"] == "constant"
    assert doc["provenance"]["classifier"]["output_stride"] == 8
    assert doc["provenance"]["segmenter"]["lr_schedule"] == "constant"
    head = doc["architecture"]["classifier"]["head"]
    assert head["dropout"] == 0.3 and model.classifier.head.dropout.p == 0.3
    assert head["schedule"] == {
        "mu0": 1.0, "warmup_epochs": 0, "sigma": 0.9, "floor": 0.65, "decay_during_warmup": True
    }  # fmt: skip
    cls = doc["provenance"]["classifier"]
    assert (cls["pda_schedule"], cls["pda_sigma"], cls["pda_floor"]) == ("official", 0.9, None)
    assert len(list((tmp_path / "model.work" / "pseudo_masks" / "deep").glob("*.png"))) == 8
    log = capsys.readouterr().out
    assert "stage 1 (classifier) recipe: default (no --recipe and no --pretrained" in log

    # the real LUAD-HistoSeg sample's test split, 224 px patches
    args = ["evaluate", "--data", str(SAMPLE), "--model", str(out), "--no-pseudo", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"miou", "fwiou", "acc", "iou"} <= set(result) and result["images"] == 6
    assert list(result["iou"]) == ["TE", "NEC", "LYM", "TAS"] and _finite(result)

    assert main(["evaluate", "--data", str(data), "--model", str(out), "--split", "val"]) == 0
    table = capsys.readouterr().out
    assert "segmentation" in table and "pseudo deep" in table and "mIoU" in table


def test_official_recipe_runs_and_is_recorded(tmp_path: Path) -> None:
    """`--recipe official` trains with the official settings it does not get from the command
    line, and model.json says which preset ran and what replaced it."""
    data = make_synthetic_dataset(tmp_path / "data", SyntheticSpec(8, 2, 2, 64, seed=7))
    out = tmp_path / "model"
    assert (
        main(["train", "--data", str(data), "--out", str(out), *TINY, "--recipe", "official"]) == 0
    )
    prov = json.loads((out / "model.json").read_text())["provenance"]
    assert prov["preset"] == {
        "recipe": "official",
        "applied": {"pda_schedule": "official", "classifier_output_stride": 8},
        "overridden": {"seg_epochs": 1, "batch_size": 4},
    }
    cls, seg = prov["classifier"], prov["segmenter"]
    assert (cls["recipe"], cls["optim"]["momentum"], cls["output_stride"]) == ("official", 5e-4, 8)
    assert (cls["pda_schedule"], cls["batch_size"], seg["epochs"]) == ("official", 4, 1)
    assert (seg["recipe"], seg["optim"]["momentum"], seg["loss"]) == ("official", 0.9, "official")


def test_bad_dataset_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    (data / "train" / "1223954-20699-37571-[0 0 1 1].png").rename(data / "train" / "unlabelled.png")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m"), *TINY])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "unlabelled.png" in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.work").exists()


@pytest.mark.slow  # a whole training
def test_last_batch_of_one_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real sample's 9 patches in batches of 4 leave one over: it joins the last batch."""
    out = tmp_path / "m"
    assert main(["train", "--data", str(SAMPLE), "--out", str(out), *TINY]) == 0
    doc = json.loads((out / "model.json").read_text())
    assert doc["provenance"]["train_patches"] == 9
    assert len(doc["provenance"]["segmenter"]["history"]) == 1
    assert len(list((tmp_path / "m.work" / "pseudo_masks" / "deep").glob("*.png"))) == 9
    capsys.readouterr()


@pytest.mark.parametrize(
    "case",
    [
        "one patch",
        "batch of one",
        "pda option",
        "dropout",
        "mpp",
        "mpp nan",
        "pretrained missing",
        "seg pretrained missing",
        "lr",
        "lr nan",
        "crop 0",
        "crop 31",
        "decoder channels 0",
        "threads",
        "out is a file",
        "cam method head",
    ],
)
def test_untrainable_settings_are_one_clear_error(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "m"), *TINY]
    if case == "one patch":
        for f in sorted((data / "train").glob("*.png"))[1:]:
            f.unlink()
        expected = "training needs at least 2 patches, found 1"
    elif case == "batch of one":
        args += ["--batch-size", "1"]  # the last flag wins
        expected = "--batch-size must be >= 2"
    elif case == "pda option":
        args += ["--head", "cam", "--pda-floor", "0.5"]
        expected = "apply to the pda head only, not to --head cam"
    elif case == "mpp":
        args += ["--mpp", "0"]
        expected = "--mpp 0.0 is out of range: micrometres per pixel must be in [0.01, 100]"
    elif case == "mpp nan":
        args += ["--mpp", "nan"]
        expected = "--mpp nan is out of range"
    elif case == "pretrained missing":
        args += ["--pretrained", str(tmp_path / "r10t.safetensors")]
        expected = "r10t.safetensors: --pretrained weights file not found; check the path"
    elif case == "seg pretrained missing":
        args += ["--seg-pretrained", str(tmp_path / "w.pth")]
        expected = "w.pth: --seg-pretrained weights file not found"
    elif case == "lr":
        args += ["--recipe", "paper", "--lr", "0"]
        expected = "--lr must be > 0, got 0.0"
    elif case == "lr nan":  # NaN passed `lr <= 0`: a traceback from the optimizer
        args += ["--lr", "nan"]
        expected = "--lr must be > 0, got nan"
    elif case in ("crop 0", "crop 31"):  # tracebacks in stage 3, after stages 1 and 2
        args += ["--crop", case.split()[1]]
        expected = f"--crop must be a multiple of 16 px (DeepLabV3+'s output stride), >= 16, got {case.split()[1]}"
    elif case == "decoder channels 0":  # blamed the encoder
        args += ["--decoder-channels", "0"]
        expected = "--decoder-channels must be >= 1, got 0"
    elif case == "threads":
        args += ["--threads", "-2"]
        expected = "--threads must be >= 1, got -2"
    elif case == "out is a file":  # trained all three stages, then a FileExistsError
        (tmp_path / "afile").write_text("mine")
        args += ["--out", str(tmp_path / "afile")]
        expected = f"{tmp_path / 'afile'}: --out is a file; give a folder for the model"
    elif case == "cam method head":
        args += ["--cam-method", "lficam"]
        expected = "--cam-method lficam needs --head lficam, not --head pda"
    else:
        args += ["--dropout", "1"]
        expected = "--dropout must be in [0, 1), got 1.0"
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.work").exists()
    assert not (tmp_path / "afile.work").exists()


@pytest.mark.slow
def test_train_with_another_cam_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PCAM pooling (a head) with CAM pseudo masks on the real sample: model.json records both."""
    out = tmp_path / "m"
    args = ["train", "--data", str(SAMPLE), "--out", str(out), *TINY]
    assert main([*args, "--head", "pcam", "--cam-method", "cam"]) == 0
    doc = json.loads((out / "model.json").read_text())
    assert doc["architecture"]["classifier"]["head"]["kind"] == "pcam"
    assert doc["provenance"]["pseudo_masks"] == {
        "method": "cam",
        "layers": ["shallow", "mid", "deep"],
        "taps": ["layer4", "layer4", "layer4"],
        "relu": True,
        "background": True,
    }
    masks = tmp_path / "m.work" / "pseudo_masks"
    assert len(list((masks / "deep").glob("*.png"))) == 9
    capsys.readouterr()

    # the same work folder with another method: refused before anything changes
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "m.work").rglob("*") if p.is_file()}
    shutil.rmtree(out)
    assert main([*args, "--head", "pcam", "--cam-method", "gradcam"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {masks}: holds pseudo masks made with --cam-method cam, and ")
    assert "delete that folder to make them again, or give another --work-dir" in err
    assert not out.exists()
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "m.work").rglob("*") if p.is_file()}
    assert after == stamps


def test_masks_of_an_earlier_run_are_not_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A work folder from before the method was recorded holds Grad-CAM masks: another method
    is refused before anything is written, and the masks stay."""
    deep = tmp_path / "m.work" / "pseudo_masks" / "deep"
    deep.mkdir(parents=True)
    (deep / "a.png").write_bytes(b"not read")
    args = ["train", "--data", str(SAMPLE), "--out", str(tmp_path / "m"), *TINY]
    assert main([*args, "--cam-method", "scorecam"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "made with --cam-method gradcam, and this run" in err
    assert sorted(p.name for p in (tmp_path / "m.work").rglob("*")) == [
        "a.png", "deep", "pseudo_masks"
    ]  # fmt: skip
    assert (deep / "a.png").read_bytes() == b"not read" and not (tmp_path / "m").exists()


def test_a_stage_that_started_otherwise_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A work folder whose stage 1 checkpoint started from random weights, or whose stage 3
    started from a file this run does not name: one error before anything is written (the
    resumed weights would ignore the option, and model.json would name the wrong start)."""
    weights = tmp_path / "w.safetensors"
    _timm_weights_file(weights)
    work = tmp_path / "m.work"
    (work / "stage1").mkdir(parents=True)
    (work / "stage1" / "state.json").write_text("{}")
    args = ["train", "--data", str(SAMPLE), "--out", str(tmp_path / "m"), *TINY]
    assert main([*args, "--pretrained", str(weights)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "classifier encoder of this work folder started from random weights" in err

    shutil.rmtree(work / "stage1")
    (work / "stage3" / "last").mkdir(parents=True)
    (work / "stage3" / "last" / "state.json").write_text("{}")
    (work / "stage3" / "pretrained.json").write_text(json.dumps({"source": str(weights)}))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"segmenter encoder of this work folder started from {weights}" in err
    assert "this run starts it from random weights" in err
    assert sorted(p.name for p in work.rglob("*")) == [
        "last", "pretrained.json", "stage3", "state.json"
    ]  # fmt: skip
    assert not (tmp_path / "m").exists()


def _timm_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A resnet10t state dict as a lab would save it (with `module.` and the ImageNet fc)."""
    torch.manual_seed(11)
    weights = timm.create_model("resnet10t").state_dict()
    with torch.no_grad():
        for name, t in weights.items():
            if t.is_floating_point() and "running" in name:
                t.copy_(torch.rand_like(t) + 0.5)
    save_file({f"module.{k}": v.contiguous() for k, v in weights.items()}, str(path))
    return weights


def test_train_options_reach_the_config(tmp_path: Path) -> None:
    argv = [
        "train", "--data", "d", "--out", "o", "--pretrained", "w.safetensors",
        "--seg-pretrained", "resnet18.a1_in1k", "--recipe", "paper", "--lr", "0.02",
        "--weight-decay", "1e-3", "--bias-lr-mult", "1", "--head-lr-mult", "5",
        "--bias-weight-decay", "--momentum", "5e-4",
        "--no-seg-blur", "--seg-vflip", "--seg-loss", "ours", "--val-gate",
        "--cam-method", "scorecam",
    ]  # fmt: skip
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    assert (cfg.pretrained, cfg.seg_pretrained, cfg.recipe) == (
        "w.safetensors", "resnet18.a1_in1k", "paper"
    )  # fmt: skip
    assert (cfg.lr, cfg.weight_decay, cfg.bias_lr_mult, cfg.head_lr_mult) == (0.02, 1e-3, 1, 5)
    assert cfg.bias_weight_decay is True and cfg.momentum == 5e-4
    assert (cfg.seg_blur, cfg.seg_vflip, cfg.seg_loss, cfg.val_gate) == (False, True, "ours", True)
    assert cfg.cam_method == "scorecam"
    plain = config_from_args(build_parser().parse_args(["train", "--data", "d", "--out", "o"]))
    assert (plain.recipe, plain.lr, plain.seg_blur, plain.val_gate) == (None, None, None, None)
    assert plain.bias_weight_decay is None and plain.momentum is None
    off = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--no-bias-weight-decay"]
    )
    assert config_from_args(off).bias_weight_decay is False
    assert plain.cam_method == "gradcam"


@pytest.mark.slow
def test_train_from_a_local_pretrained_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real LUAD sample from a local weights file: the paper recipe by default, the frozen
    stem, first stage and BatchNorm of the classifier still equal the file's, model.json
    records the source and its sha256."""
    weights = _timm_weights_file(tmp_path / "r10t.safetensors")
    out = tmp_path / "m"
    tiny = [a for a in TINY if a != "--fp16"]
    src = str(tmp_path / "r10t.safetensors")
    args = ["train", "--data", str(SAMPLE), "--out", str(out), *tiny, "--pretrained", src]
    assert main([*args, "--seg-pretrained", src]) == 0
    log = capsys.readouterr().out
    for stage, option in (
        ("1 (classifier)", "--pretrained"),
        ("3 (segmenter)", "--seg-pretrained"),
    ):
        assert f"stage {stage} recipe: paper (no --recipe and {option} given" in log
    assert f"pretrained classifier encoder from {src}: 84 tensors matched, 0 missing" in log
    assert f"pretrained segmenter encoder from {src}: 84 tensors matched, 0 missing" in log

    doc = json.loads((out / "model.json").read_text())["provenance"]
    for stage in ("classifier", "segmenter"):
        record = doc[stage]["pretrained_weights"]
        assert (record["source"], record["kind"], record["matched"]) == (src, "file", 84)
        assert record["sha256"] == file_sha256(tmp_path / "r10t.safetensors")
        assert record["unexpected"] == ["module.fc.bias", "module.fc.weight"]
        assert doc[stage]["recipe"] == "paper" and doc[stage]["optim"]["optimizer"] == "sgd"
    assert doc["classifier"]["optim"]["frozen_stages"] == ["stem", "layer1"]
    assert doc["segmenter"]["loss"] == "official" and doc["segmenter"]["blur"] is True

    body = load_model(out).classifier.backbone.body.state_dict()
    frozen = [k for k in body if k.startswith(("conv1", "layer1")) or "running" in k]
    for key in frozen:  # frozen by the paper recipe: exactly the file's tensors
        assert torch.equal(body[key], weights[key]), key
    assert not torch.equal(body["layer4.0.conv1.weight"], weights["layer4.0.conv1.weight"])


def test_a_work_folder_trained_with_other_settings_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun with another --seed and --head on a work folder resumed it: stage 1 went on
    under the new settings, stages 2 and 3 were not redone, and model.json named settings the
    weights never had. Refused before anything is written, naming each setting."""
    from dataclasses import asdict

    out = tmp_path / "m"
    args = ["train", "--data", str(SAMPLE), "--out", str(out), *TINY]
    earlier = config_from_args(build_parser().parse_args([*args, "--seed", "1"]))
    work = tmp_path / "m.work"
    work.mkdir()
    saved = json.dumps({**asdict(earlier), FORMAT_KEY: TRAINING_FORMAT}, indent=1, default=str)
    (work / "config.json").write_text(saved)
    assert main([*args, "--seed", "9", "--head", "cam"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {work}: this work folder was trained with other settings (--head pda -> cam, "
        "--seed 1 -> 9); resuming would mix them and model.json would name settings its "
        f"weights never had; delete {work} to train again, or give another --work-dir\n"
    )
    assert [p.name for p in work.iterdir()] == ["config.json"] and not out.exists()
    assert (work / "config.json").read_text() == saved


def test_a_work_folder_of_an_older_training_format_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A work folder from before the code changed what its checkpoints and masks mean (no
    `training_format` in config.json: format 1) was resumed as if they meant the same, its
    segmenter going on with other ASPP rates. Refused before anything is written."""
    from dataclasses import asdict

    out = tmp_path / "m"
    args = ["train", "--data", str(SAMPLE), "--out", str(out), *TINY]
    work = tmp_path / "m.work"
    work.mkdir()
    earlier = config_from_args(build_parser().parse_args(args))
    saved = json.dumps(asdict(earlier), indent=1, default=str)
    (work / "config.json").write_text(saved)
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"error: {work}: this work folder was trained by another version of wsi-segment "
        f"(training format 1, this version's {TRAINING_FORMAT}), whose checkpoints and pseudo "
        f"masks mean something else; resuming would mix them; delete {work} to train again, "
        "or give another --work-dir\n"
    )
    assert [p.name for p in work.iterdir()] == ["config.json"] and not out.exists()
    assert (work / "config.json").read_text() == saved
