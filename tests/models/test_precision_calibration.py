"""precision 'auto' on the CPU: a function of the model and the machine, never of the run."""

from __future__ import annotations

import hashlib

import pytest
import torch

from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.device import cpu_has_amx
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.precision_calibration import (
    MIN_AGREEMENT,
    PrecisionCalibration,
    calibrate_bf16,
    calibration_tiles,
)
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.segmenter import build_segmenter

META = ModelMeta("tiny", ["a", "b", "c"], [(255, 0, 0), (0, 255, 0), (0, 0, 255)], 1.0, 64)


def test_calibration_tiles_are_the_same_bytes_everywhere() -> None:
    """Integers from a seeded generator: the digest holds on any CPU (no float arithmetic)."""
    tiles = calibration_tiles(64)
    assert tiles.shape == (4, 3, 64, 64) and tiles.dtype == torch.uint8
    digest = hashlib.sha256(tiles.numpy().tobytes()).hexdigest()
    assert digest == "1ea7fb302afbd26fa3edb821b3642e4c8dbec64c9380ba0162bd584bc6dedf60"
    assert torch.equal(calibration_tiles(64), tiles)
    assert int(tiles.min()) == 28 and int(tiles.max()) == 250  # glass to haematoxylin


def test_bf16_is_kept_only_when_it_keeps_the_labels() -> None:
    assert MIN_AGREEMENT == 0.995
    assert PrecisionCalibration(4, 64, MIN_AGREEMENT, 0.01).bf16_chosen
    assert not PrecisionCalibration(4, 64, 0.9949, 0.01).bf16_chosen
    d = PrecisionCalibration(4, 64, 0.999, 0.01).as_dict()
    assert d["chosen"] == "bf16" and "99.90 %" in str(d["reason"])
    assert str(d["reason"]).startswith("bf16: the CPU has AMX")


def _model() -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel(
        build_classifier("resnet10t", "cam", 3),
        build_segmenter("tu-resnet10t", 3, decoder_channels=16),
        META,
    )


def test_calibration_compares_fp32_and_bf16_on_the_fixed_tiles() -> None:
    """What `to_device('cpu', 'auto')` runs on a CPU with AMX, checked on any CPU: agreement
    and max |dp| are those of fp32 vs bf16 predictions of the calibration tiles."""
    model = _model().to_device("cpu", "fp32")
    tiles = calibration_tiles(64)
    ref, _ = model.predict(tiles)
    low, _ = model.to_device("cpu", "bf16").predict(tiles)

    def forward(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        return model._predict(x, True, dtype)[0]

    cal = calibrate_bf16(forward, 64)
    assert cal.tiles == 4 and cal.tile_size == 64
    assert cal.agreement == pytest.approx((ref.argmax(1) == low.argmax(1)).float().mean().item())
    assert cal.max_prob_diff == pytest.approx((ref - low).abs().max().item())
    assert calibrate_bf16(forward, 64) == cal  # nothing timed, nothing drawn from the run


def test_auto_on_this_cpu_says_what_runs_and_why() -> None:
    model = _model().to_device("cpu", "auto")
    report = model.precision_report()
    assert report["device"] == "cpu" and report["channels_last"] is True
    if cpu_has_amx():
        cal = report["calibration"]
        assert isinstance(cal, dict) and report["autocast"] == cal["chosen"]
        assert report["reason"] == cal["reason"]
    else:
        assert report["autocast"] == "fp32" and report["calibration"] is None
        assert str(report["reason"]).startswith("fp32: auto on a CPU with ")
    assert _model().to_device("cpu", "auto").precision_report() == report  # every load
    for fixed in ("fp32", "bf16"):
        fixed_report = model.to_device("cpu", fixed).precision_report()
        assert fixed_report["autocast"] == fixed and fixed_report["calibration"] is None
        assert fixed_report["reason"] == f"{fixed}: asked for (--precision {fixed})"
