"""Stage 2 on the real sample: one PNG per patch per depth, only labelled classes, done work skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsi_segment.models.classifier import build_classifier
from wsi_segment.pipeline.training.datasets import open_dataset
from wsi_segment.pipeline.training.make_pseudo_masks import make_pseudo_masks, mask_name

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
