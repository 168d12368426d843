"""Each stage-2 CAM method end to end through `train()` on the real LUAD-HistoSeg sample.

The PNG masks stage 2 wrote are exactly the method's masks of the saved classifier, hold only
classes of the patch label, are 255 where the background rule says (and, for ReLU'd maps,
where no present class of a patch with several has evidence), and model.json records the
method. CAM reuses the Grad-CAM run's finished stage 1 (the same classifier), so
the two methods' masks are compared on one classifier.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_segment.models.background import background_mask
from wsi_segment.models.bundle import load_model
from wsi_segment.models.cam_methods import cam_method
from wsi_segment.models.pseudo_masks import pseudo_masks
from wsi_segment.pipeline.training.datasets import open_dataset
from wsi_segment.pipeline.training.make_pseudo_masks import LAYERS, mask_name
from wsi_segment.pipeline.training.train import TrainConfig, train
from wsi_segment.pipeline.training.train_batches import load_batch

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"
BATCH = 4
TINY = {
    "encoder": "resnet10t",
    "seg_encoder": "resnet10t",
    "decoder_channels": 16,
    "epochs": 1,
    "batch_size": BATCH,
    "max_steps": 1,
    "device": "cpu",
    "threads": 1,
}
DEEP_ONLY = {"cam", "lficam"}  # their weights read the deepest features: one map, three masks


@dataclass(frozen=True)
class Run:
    data: Path
    out: Path
    work: Path


def _train(
    data: Path, root: Path, method: str, head: str = "pda", stage1: Path | None = None
) -> Run:
    out, work = root / "model", root / "work"
    if stage1 is not None:  # a finished stage 1: train() loads it instead of training again
        shutil.copytree(stage1, work / "stage1")
    train(TrainConfig(data=data, out=out, work_dir=work, head=head, cam_method=method, **TINY))
    return Run(data, out, work)


def _written(run: Run) -> list[np.ndarray]:
    """Stage 2's PNGs, (patches, H, W) per depth, in the dataset's order."""
    items = open_dataset(run.data).train_items()
    d = run.work / "pseudo_masks"
    return [
        np.stack([np.asarray(Image.open(d / lay / mask_name(it))) for it in items])
        for lay in LAYERS
    ]


def _check(run: Run, method: str) -> None:
    ds = open_dataset(run.data)
    items = ds.train_items()
    images = load_batch([it.image for it in items])
    labels = torch.tensor([it.labels for it in items], dtype=torch.float32)

    record = json.loads((run.out / "model.json").read_text())["provenance"]["pseudo_masks"]
    taps = ["layer4"] * 3 if method in DEEP_ONLY else ["layer2", "layer3", "layer4"]
    assert record == {
        "method": method,
        "layers": list(LAYERS),
        "taps": taps,
        "relu": method != "gradcam",
        "background": True,
    }
    assert json.loads((run.work / "pseudo_masks" / "method.json").read_text()) == record

    written = _written(run)
    # the saved classifier, in stage 2's batches, threads and memory layout (load_model makes
    # it channels_last, whose convolutions round otherwise), gives the same masks
    clf = load_model(run.out, device="cpu").classifier
    clf = clf.to(memory_format=torch.contiguous_format)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [
            pseudo_masks(clf, images[i : i + BATCH], labels[i : i + BATCH], method=method)
            for i in range(0, len(items), BATCH)
        ]
    finally:
        torch.set_num_threads(threads)
    for depth, got in enumerate(written):
        expected = torch.cat([p[depth] for p in parts]).numpy()
        assert np.array_equal(got, expected), f"{method} {LAYERS[depth]}"

    bg = background_mask(images).numpy()
    assert bg.any() and not bg.all()  # the rule has pixels to act on
    for masks in written:
        assert masks.dtype == np.uint8 and masks.shape == (len(items), *images.shape[-2:])
        ignored = masks == 255
        assert np.array_equal(ignored & bg, bg)  # 255 wherever the background rule says
        if not cam_method(method).relu:
            assert np.array_equal(ignored, bg)  # and nowhere else
        # ReLU'd maps: also tissue where no present class has evidence, only on patches
        # with two or more present classes (one present class keeps all its tissue)
        for it, m, no_evidence in zip(items, masks, ignored & ~bg, strict=True):
            allowed = {k for k, on in enumerate(it.labels) if on} | {255}
            assert set(np.unique(m).tolist()) <= allowed  # absent classes never appear
            assert sum(it.labels) >= 2 or not no_evidence.any()
    if method in DEEP_ONLY:
        assert all(np.array_equal(written[0], m) for m in written[1:])


@pytest.fixture(scope="module")
def gradcam_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(SAMPLE, tmp_path_factory.mktemp("gradcam"), "gradcam")


def test_grad_cam_default(gradcam_run: Run) -> None:
    _check(gradcam_run, "gradcam")
    written = _written(gradcam_run)
    assert not np.array_equal(written[0], written[2])  # three depths, three different masks


def test_cam_on_the_same_classifier(gradcam_run: Run, tmp_path: Path) -> None:
    run = _train(SAMPLE, tmp_path, "cam", stage1=gradcam_run.work / "stage1")
    _check(run, "cam")
    # the same classifier weights, another method: other masks
    a = load_model(run.out).classifier.state_dict()
    b = load_model(gradcam_run.out).classifier.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not np.array_equal(_written(run)[2], _written(gradcam_run)[2])


@pytest.mark.slow  # a whole training; the LFI-CAM head's reference test stays
def test_lfi_cam_with_its_head(tmp_path: Path) -> None:
    _check(_train(SAMPLE, tmp_path, "lficam", head="lficam"), "lficam")


def test_reference_lfi_cam_head_trains_and_is_saved(tmp_path: Path) -> None:
    """The lficam-ref head (the authors' FIN) trains, saves and reloads; its pseudo masks come
    from a per-class method (its own LFI-CAM map is class-agnostic)."""
    data = _downscaled(tmp_path / "data", 112)  # the head is the subject: a quarter the pixels
    run = _train(data, tmp_path / "run", "cam", head="lficam-ref")
    _check(run, "cam")
    assert load_model(run.out).classifier.head.kind == "lficam-ref"


def _downscaled(data: Path, size: int) -> Path:
    """The sample's training patches (and its Readme), downscaled to `size` px."""
    (data / "train").mkdir(parents=True)
    shutil.copy(SAMPLE / "Readme.txt", data / "Readme.txt")
    for path in sorted((SAMPLE / "train").glob("*.png")):
        with Image.open(path) as im:
            small = im.convert("RGB").resize((size, size), Image.Resampling.BOX)
            small.save(data / "train" / path.name)
    return data


@pytest.mark.slow
def test_score_cam(tmp_path: Path) -> None:
    """Score-CAM runs one forward pass per channel (896 per patch with resnet10t), ~95 s per
    224 px patch on one core: two of the sample's multi-class patches, downscaled to 64 px."""
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    shutil.copy(SAMPLE / "Readme.txt", data / "Readme.txt")
    for name in ("1223954-20699-48323-[1 0 0 1].png", "1224965-38724-30671-[1 1 0 1].png"):
        with Image.open(SAMPLE / "train" / name) as im:
            im.convert("RGB").resize((64, 64), Image.Resampling.BOX).save(data / "train" / name)
    _check(_train(data, tmp_path / "run", "scorecam"), "scorecam")
