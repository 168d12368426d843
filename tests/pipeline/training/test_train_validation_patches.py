"""Training records the model's own validation patches in its folder, and precision auto's
calibration labels them: a tiny model trained on the real LUAD-HistoSeg sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import calibrating_spec
from wsi_segment.models.bundle import load_bundle
from wsi_segment.models.runtimes.select import open_runtime
from wsi_segment.models.validation_patches import PATCHES_FILE
from wsi_segment.pipeline.training.datasets import open_dataset
from wsi_segment.pipeline.training.train import TrainConfig, recorded_patches, train

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"
TINY = {
    "encoder": "resnet10t",
    "seg_encoder": "resnet10t",
    "decoder_channels": 16,
    "epochs": 1,
    "batch_size": 4,
    "max_steps": 1,
    "device": "cpu",
    "threads": 1,
}
VAL = ["1004470-16568-24715.png", "1004470-23736-36363.png", "1009800-17245-26213.png"]


@pytest.mark.slow
def test_trained_model_keeps_its_val_patches_and_calibrates_on_them(tmp_path: Path) -> None:
    out = train(TrainConfig(data=SAMPLE, out=tmp_path / "m", work_dir=tmp_path / "w", **TINY))
    entry = json.loads((out / "model.json").read_text())["validation_patches"]
    assert entry["split"] == "val" and entry["count"] == 3 and entry["sources"] == VAL
    assert entry["file"] == PATCHES_FILE
    model = load_bundle(out)
    want = np.stack(
        [np.asarray(Image.open(SAMPLE / "val" / "img" / n).convert("RGB")) for n in VAL]
    )
    assert model.validation_patches is not None
    np.testing.assert_array_equal(model.validation_patches, want.transpose(0, 3, 1, 2))
    cal = open_runtime(model, calibrating_spec()).calibration
    assert cal is not None  # precision auto on an AMX CPU
    assert (cal.tiles, cal.own_patches, cal.tile_size) == (9, 3, 224)


def test_without_a_val_split_the_training_patches_are_kept(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE / "train", tmp_path / "train")
    shutil.copy(SAMPLE / "Readme.txt", tmp_path / "Readme.txt")
    ds = open_dataset(tmp_path)
    patches = recorded_patches(ds, 64)
    names = sorted(p.name for p in (SAMPLE / "train").glob("*.png"))
    assert patches.split == "train" and patches.sources == tuple(names)
    first = np.asarray(Image.open(SAMPLE / "train" / names[0]).convert("RGB"))
    assert np.array_equal(patches.pixels[0], first[80:144, 80:144])  # centre 64 px
    assert recorded_patches(ds, 64).pixels.tobytes() == patches.pixels.tobytes()
