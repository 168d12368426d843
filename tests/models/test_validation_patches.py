"""A model's own validation patches in its folder: exact round trip, identity, refusals, and
the bf16 calibration labelling them beside the CMU-1 tiles (in torch and in OpenVINO)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.conftest import TORCH_SPEC, calibrating_spec, run_geometry
from tests.models.tiny_models import META, TILE, tiny_segmentation_model
from wsi_segment.errors import ModelError
from wsi_segment.models.bundle import load_bundle, load_model, save_model
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.model_files import BuiltModel
from wsi_segment.models.precision_calibration import (
    calibrate_bf16,
    calibration_tiles,
    compare_labels,
)
from wsi_segment.models.runtimes.select import open_runtime, torch_labeller
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.validation_patches import PATCHES_FILE, ValidationPatches, choose

LUAD = Path(__file__).resolve().parents[1] / "data" / "luad-histoseg-sample"


def _patches() -> ValidationPatches:
    """Three real LUAD-HistoSeg val/test patches, centre 64 px."""
    paths = sorted(LUAD.glob("*/img/*.png"))[:3]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"))[80:144, 80:144] for p in paths])
    return ValidationPatches(pixels, tuple(p.name for p in paths), "val")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(
        tiny_segmentation_model(),
        tmp_path_factory.mktemp("m") / "tiny",
        validation_patches=_patches(),
    )


def test_choice_is_spread_over_the_sorted_names_and_the_same_every_time() -> None:
    names = [f"p{i:02d}.png" for i in range(40)]
    picked = choose(list(reversed(names)))
    assert picked == [f"p{i * 40 // 16:02d}.png" for i in range(16)]
    assert picked[:4] == ["p00.png", "p02.png", "p05.png", "p07.png"]
    assert choose(["b.png", "a.png"]) == ["a.png", "b.png"]  # fewer than 16: all, sorted


def test_round_trip_is_exact_and_model_json_names_the_file(folder: Path) -> None:
    patches = _patches()
    entry = json.loads((folder / "model.json").read_text())["validation_patches"]
    assert entry["file"] == PATCHES_FILE and entry["count"] == 3 and entry["split"] == "val"
    assert entry["sources"] == list(patches.sources)
    loaded = load_bundle(folder).validation_patches
    assert loaded is not None and loaded.dtype == np.uint8  # read without torch
    np.testing.assert_array_equal(loaded, patches.pixels.transpose(0, 3, 1, 2))
    # the identity covers the patches: model.json holds their sha256
    plain = save_model(tiny_segmentation_model(), folder.parent / "plain")
    assert load_bundle(plain).validation_patches is None  # older folders load as before
    assert load_bundle(plain).identity != load_bundle(folder).identity


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_changed_missing_or_misshapen_patches_are_refused(folder: Path, tmp_path: Path) -> None:
    changed = _copy(folder, tmp_path / "changed")
    data = bytearray((changed / PATCHES_FILE).read_bytes())
    data[-1] ^= 1
    (changed / PATCHES_FILE).write_bytes(bytes(data))
    with pytest.raises(
        ModelError, match=r"validation_patches\.safetensors does not match the sha256"
    ):
        load_model(changed)

    missing = _copy(folder, tmp_path / "missing")
    (missing / PATCHES_FILE).unlink()
    with pytest.raises(ModelError, match=r"is missing: model.json names validation patches"):
        load_model(missing)

    outside = _copy(folder, tmp_path / "outside")
    doc = json.loads((outside / "model.json").read_text())
    doc["validation_patches"]["file"] = "../changed/" + PATCHES_FILE
    (outside / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"'validation_patches.file' is '\.\./changed/"):
        load_model(outside)

    miscount = _copy(folder, tmp_path / "miscount")
    doc = json.loads((miscount / "model.json").read_text())
    doc["validation_patches"]["count"] = 2
    (miscount / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"must hold uint8 'patches' of shape \(2, 64, 64, 3\)"):
        load_model(miscount)

    with pytest.raises(ModelError, match=r"validation patches are \(64, 64\) px"):
        big = ModelMeta("t", META.classes, META.colors, 1.0, 224)
        save_model(tiny_segmentation_model(), tmp_path / "big", big, validation_patches=_patches())


def test_torch_calibration_labels_the_patches_beside_the_cmu_tiles(folder: Path) -> None:
    loaded = load_bundle(folder)
    model, own = loaded.network(), loaded.validation_patches
    assert own is not None
    x = calibration_tiles(TILE, own)
    assert x.shape == (9, 3, TILE, TILE)
    np.testing.assert_array_equal(x[:6], calibration_tiles(TILE))
    np.testing.assert_array_equal(x[6:], own)
    labels_of = torch_labeller(model, TILE)
    ref = labels_of(x, False)
    low = labels_of(x, True)
    cal = open_runtime(loaded, calibrating_spec()).calibration  # precision auto, a CPU with AMX
    assert cal is not None
    agreement, shifts = compare_labels(ref, low)
    assert (cal.tiles, cal.own_patches) == (9, 3)
    assert cal.agreement == agreement and cal.area_shifts == shifts
    assert "on 9 real H&E calibration tiles (3 of them the model's validation patches)" in (
        cal.reason()
    )
    assert calibrate_bf16(labels_of, TILE, "the CPU has AMX").own_patches == 0


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) * 8


def test_openvino_calibration_labels_the_patches_too(tmp_path: Path) -> None:
    """open_runtime's own bf16 calibration (precision auto, a CPU described with AMX) counts
    the model's patches among its tiles, in the numbers it caches too."""
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    network = SegmentationModel(_Classifier(), seg, META).to_device("cpu")
    own = np.ascontiguousarray(_patches().pixels.transpose(0, 3, 1, 2))
    model = BuiltModel(network, validation_patches=own)
    flags = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    spec = dataclasses.replace(
        TORCH_SPEC,
        runtime="openvino",
        precision="bf16-if-calibrated",
        geometry=run_geometry(TILE),
        cpu_flags=flags,
    )
    choice = open_runtime(model, spec, tmp_path)
    assert choice.runtime == "openvino" and choice.calibration is not None
    assert (choice.calibration.tiles, choice.calibration.own_patches) == (9, 3)
    again = open_runtime(model, spec, tmp_path)  # numbers cached
    assert again.checks_computed == 0 and again.calibration == choice.calibration
    model = BuiltModel(network, validation_patches=own[:2])  # other tiles: computed again
    other = open_runtime(model, spec, tmp_path)
    assert other.checks_computed == 2 and other.calibration is not None
    assert (other.calibration.tiles, other.calibration.own_patches) == (8, 2)
