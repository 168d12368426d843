"""precision 'auto': bf16 only for a model that keeps its answers on real tissue, decided by
the model and the machine, never by the run."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TORCH_SPEC, plan_spec
from tests.models.tiny_models import tiny_segmentation_model
from wsi_segment.models.cpu import AMX_FLAG, cpu_flags
from wsi_segment.models.model_files import BuiltModel
from wsi_segment.models.precision_calibration import (
    MAX_AREA_SHIFT,
    MIN_AGREEMENT,
    PrecisionCalibration,
    calibrate_bf16,
    calibration_tiles,
    compare_labels,
)
from wsi_segment.models.runtimes.select import open_runtime, torch_labeller


def test_calibration_tiles_are_real_tissue_and_the_same_bytes_everywhere() -> None:
    """Six lossless 224 px tiles cut from the CMU-1 slide; other sizes are centre crops or
    mirror pads made with integer indexing only, so every machine gets the same bytes."""
    tiles = calibration_tiles(224)
    assert tiles.shape == (6, 3, 224, 224) and tiles.dtype == np.uint8
    assert tiles.flags.c_contiguous
    digest = hashlib.sha256(tiles.tobytes()).hexdigest()
    assert digest == "b8bfef9fa1f59c24fea66f3d40626e9f766706e68ae53000c00c0a62a658df2b"
    small = calibration_tiles(64)
    np.testing.assert_array_equal(small, tiles[:, :, 80:144, 80:144])  # the centre
    big = calibration_tiles(300)
    assert big.shape == (6, 3, 300, 300)
    np.testing.assert_array_equal(big[:, :, 38:262, 38:262], tiles)
    np.testing.assert_array_equal(big[:, :, 37, 38:262], tiles[:, :, 0])  # mirrored at the edge
    # real H&E, not glass: most pixels are stained (eosin pink to haematoxylin purple)
    stained = float(np.mean(tiles.mean(1) < 220))
    assert stained > 0.6


def test_the_tiles_are_the_cmu_slides_own_pixels() -> None:
    """Each file name says where on the CC0 slide it was cut (tests/data README)."""
    import openslide

    slide = openslide.OpenSlide("tests/data/CMU-1-Small-Region.svs")
    region = slide.read_region((1264, 1264), 0, (512, 512)).convert("RGB").reduce(2)
    expected = np.asarray(region)[16:240, 16:240]
    tiles = calibration_tiles(224).transpose(0, 2, 3, 1)
    assert any(np.array_equal(t, expected) for t in tiles)


def test_bf16_is_kept_only_when_it_keeps_labels_and_areas() -> None:
    assert MIN_AGREEMENT == 0.995 and MAX_AREA_SHIFT == 0.01
    assert PrecisionCalibration(6, 64, MIN_AGREEMENT, MAX_AREA_SHIFT).bf16_chosen
    assert not PrecisionCalibration(6, 64, 0.9949, 0.0).bf16_chosen
    assert not PrecisionCalibration(6, 64, 1.0, 0.0101).bf16_chosen
    d = PrecisionCalibration(6, 64, 0.999, 0.002, "the CPU has AMX").as_dict()
    assert d["chosen"] == "bf16" and "99.90 %" in str(d["reason"])
    assert "0.20 %" in str(d["reason"]) and str(d["reason"]).startswith("bf16: the CPU has AMX")


def test_area_shift_is_relative_to_the_fp32_area_of_labels_that_are_an_area() -> None:
    ref = np.zeros(1000, np.uint8)
    ref[600:] = 1  # 600 px of label 0, 400 of label 1
    ref[999] = 2  # one pixel of label 2: 0.1 % of the pixels, judged by agreement alone
    low = ref.copy()
    low[:3] = 1  # 3 px move from 0 to 1
    low[999] = 1
    agreement, shifts = compare_labels(ref, low)
    assert agreement == pytest.approx(0.996)
    assert shifts == {"0": pytest.approx(3 / 600), "1": pytest.approx(4 / 399)}


def test_calibration_compares_fp32_and_bf16_labels_on_the_real_tiles() -> None:
    """What precision auto runs on a CPU with AMX, checked on any CPU: the agreement and
    area shifts are those of the slide path's fp32 and bf16 labels."""
    model = tiny_segmentation_model().to_device("cpu")
    labels_of = torch_labeller(model, 64)
    tiles = calibration_tiles(64)
    ref = labels_of(tiles, False)
    low = labels_of(tiles, True)
    cal = calibrate_bf16(labels_of, 64, "the CPU has AMX")
    agreement, shifts = compare_labels(ref, low)
    assert cal.tiles == 6 and cal.tile_size == 64
    assert cal.agreement == agreement and cal.area_shifts == shifts
    assert cal.max_area_shift == max(shifts.values(), default=0.0)
    assert calibrate_bf16(labels_of, 64, "the CPU has AMX") == cal  # nothing timed


def test_auto_on_this_cpu_says_what_runs_and_why() -> None:
    model = tiny_segmentation_model().to_device("cpu")
    report = open_runtime(BuiltModel(model), plan_spec("auto")).report()
    assert report["device"] == "cpu" and report["channels_last"] is True
    assert report["runtime"] == "torch"
    if AMX_FLAG in cpu_flags():
        cal = report["calibration"]
        assert isinstance(cal, dict) and report["autocast"] == cal["chosen"]
        assert report["reason"] == cal["reason"]
    else:
        assert report["autocast"] == "fp32" and report["calibration"] is None
        assert str(report["reason"]).startswith("fp32: auto on a CPU with ")
    again = open_runtime(
        BuiltModel(tiny_segmentation_model().to_device("cpu")), plan_spec("auto")
    ).report()
    assert again == report  # every load
    for fixed in ("fp32", "bf16"):
        fixed_report = open_runtime(BuiltModel(model), plan_spec(fixed)).report()
        assert fixed_report["autocast"] == fixed and fixed_report["calibration"] is None
        assert fixed_report["reason"] == f"{fixed}: asked for (--precision {fixed})"


def test_png_tiles_decode_losslessly() -> None:
    """PNG, not JPEG: no decoder version can change a calibration pixel."""
    from importlib import resources

    folder = resources.files("wsi_segment.models") / "calibration_tiles"
    names = sorted(e.name for e in folder.iterdir() if e.name.endswith(".png"))
    assert len(names) == 6
    with (folder / names[0]).open("rb") as f, Image.open(f) as im:
        assert im.format == "PNG" and im.size == (224, 224) and im.mode == "RGB"


def test_open_runtime_runs_the_precision_the_plan_decided() -> None:
    """A run hands its plan's precision and reason to the loader, which runs it and decides
    nothing again: bf16-if-calibrated obtains the calibration's verdict on any CPU (AMX or
    not), and a decided value runs with the plan's reason."""
    calibrate = dataclasses.replace(
        TORCH_SPEC,
        precision="bf16-if-calibrated",
        precision_reason="bf16-if-calibrated: the policy's",
    )
    model = tiny_segmentation_model().to_device("cpu")
    calibrated = open_runtime(BuiltModel(model), calibrate)
    assert calibrated.cache_record()["checks_computed"] == 1  # the calibration ran here
    report = calibrated.report()
    cal = report["calibration"]
    assert isinstance(cal, dict) and cal["tiles"] == 6
    assert report["autocast"] == cal["chosen"] and report["reason"] == cal["reason"]
    pinned = dataclasses.replace(TORCH_SPEC, precision="bf16", precision_reason="bf16: pinned")
    decided = open_runtime(BuiltModel(model), pinned)
    assert decided.precision == "bf16" and decided.cache_record()["checks_computed"] == 0
    report = decided.report()
    assert (report["autocast"], report["reason"], report["calibration"]) == (
        "bf16",
        "bf16: pinned",
        None,
    )
