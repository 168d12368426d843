"""Stage 2 on the real sample: one PNG per patch per depth, only labelled classes, done work skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_segment.errors import ConfigError, SlideInterrupted
from wsi_segment.models.bundle import demo_model_dir, load_model
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.pseudo_masks import pseudo_masks
from wsi_segment.pipeline.cancellation import Cancellation
from wsi_segment.pipeline.training.datasets import open_dataset
from wsi_segment.pipeline.training.make_pseudo_masks import (
    check_pseudo_mask_folder,
    made_with,
    make_pseudo_masks,
    mask_name,
)
from wsi_segment.pipeline.training.train_batches import load_batch

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"


def test_masks_per_depth_and_skip_done(tmp_path: Path) -> None:
    ds = open_dataset(SAMPLE)
    torch.manual_seed(0)
    clf = build_classifier("resnet10t", "cam", ds.num_classes)
    dirs = make_pseudo_masks(ds, clf, tmp_path, torch.device("cpu"), batch_size=9)
    assert [d.name for d in dirs] == ["shallow", "mid", "deep"]
    items = ds.train_items()
    for d in dirs:
        assert sorted(p.name for p in d.glob("*.png")) == sorted(mask_name(it) for it in items)
        for it in items:
            with Image.open(d / mask_name(it)) as im:
                assert im.mode == "P" and im.size == (224, 224)
                assert tuple(im.getpalette()[:3]) == ds.colors[0]
                values = set(np.unique(np.asarray(im)).tolist())
            allowed = {k for k, on in enumerate(it.labels) if on} | {255}
            assert values <= allowed  # classes absent from the patch label never appear

    # a rerun writes nothing; a missing file is regenerated
    stamps = {p: p.stat().st_mtime_ns for d in dirs for p in d.glob("*.png")}
    victim = dirs[1] / mask_name(items[0])
    victim.unlink()
    make_pseudo_masks(ds, clf, tmp_path, torch.device("cpu"), batch_size=9)
    assert victim.is_file()
    unchanged = [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns == t]
    # only the patch with the missing file is redone (its 3 depths)
    assert len(unchanged) == len(stamps) - 3


def test_each_depth_folder_holds_that_depths_masks(tmp_path: Path) -> None:
    """The demo classifier's Grad-CAM masks differ by depth on the sample (41,321 px between
    shallow and mid, 30,226 mid to deep): each folder holds the masks of its own depth."""
    ds = open_dataset(SAMPLE)
    clf = load_model(demo_model_dir()).classifier
    dirs = make_pseudo_masks(ds, clf, tmp_path, torch.device("cpu"))
    items = ds.train_items()
    labels = torch.tensor([it.labels for it in items])
    expected = pseudo_masks(clf, load_batch([it.image for it in items]), labels)
    written = [np.stack([np.asarray(Image.open(d / mask_name(it))) for it in items]) for d in dirs]
    for got, want in zip(written, expected, strict=True):
        np.testing.assert_array_equal(got, want.numpy())
    assert [int((written[i] != written[j]).sum()) for i, j in ((0, 1), (1, 2))] == [41321, 30226]


def test_method_is_recorded_and_another_is_refused(tmp_path: Path) -> None:
    """method.json says how the masks were made; a rerun asking for another method is one
    ConfigError and leaves the masks as they were (stage 3 never trains on the wrong ones)."""
    ds = open_dataset(SAMPLE)
    torch.manual_seed(0)
    clf = build_classifier("resnet10t", "lficam", ds.num_classes)
    dirs = make_pseudo_masks(ds, clf, tmp_path, torch.device("cpu"), batch_size=9, method="cam")
    record = json.loads((tmp_path / "method.json").read_text())
    assert record == {
        "method": "cam",
        "layers": ["shallow", "mid", "deep"],
        "taps": ["layer4", "layer4", "layer4"],  # CAM reads the deepest features only
        "relu": True,
        "background": True,
    }
    assert made_with(tmp_path) == record
    for it in ds.train_items():  # one map for every depth: three equal masks
        first, *rest = (np.asarray(Image.open(d / mask_name(it))) for d in dirs)
        assert all(np.array_equal(first, m) for m in rest)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="holds pseudo masks made with --cam-method cam, and "):
        make_pseudo_masks(ds, clf, tmp_path, torch.device("cpu"), method="lficam")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    check_pseudo_mask_folder(tmp_path, "cam")  # the same method resumes


def test_masks_without_a_record_were_made_with_grad_cam(tmp_path: Path) -> None:
    """Work folders from before the record existed hold Grad-CAM masks (the only method then)."""
    assert made_with(tmp_path) is None
    check_pseudo_mask_folder(tmp_path, "scorecam")  # nothing made yet: any method
    (tmp_path / "mid").mkdir()
    Image.new("P", (4, 4)).save(tmp_path / "mid" / "a.png")
    assert made_with(tmp_path) == {"method": "gradcam"}
    check_pseudo_mask_folder(tmp_path, "gradcam")
    with pytest.raises(ConfigError, match="made with --cam-method gradcam, and this run asks for"):
        check_pseudo_mask_folder(tmp_path, "scorecam")
    (tmp_path / "method.json").write_text("{")
    with pytest.raises(ConfigError, match=r"method.json: unreadable .*; delete .* to make the"):
        made_with(tmp_path)


def test_a_cancelled_run_stops_before_its_next_batch(tmp_path: Path) -> None:
    """Once the run's token is cancelled (`pipeline.cancellation`), stage 2 raises its stop
    before the next batch (here the first: nothing written), and a rerun does them all."""
    ds = open_dataset(SAMPLE)
    torch.manual_seed(0)
    clf = build_classifier("resnet10t", "cam", ds.num_classes)
    stop = Cancellation()
    stop.cancel(SlideInterrupted)
    with pytest.raises(SlideInterrupted):
        make_pseudo_masks(ds, clf, tmp_path, torch.device("cpu"), batch_size=9, cancel=stop)
    assert not list(tmp_path.glob("*/*.png"))  # stopped before the first batch
    dirs = make_pseudo_masks(ds, clf, tmp_path, torch.device("cpu"), batch_size=9)
    assert all(len(list(d.glob("*.png"))) == len(ds.train_items()) for d in dirs)
