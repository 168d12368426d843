"""precision 'auto' on a bf16 CPU: the rule that keeps bf16, and the trial on a real model."""

from __future__ import annotations

import pytest
import torch

from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.device import cpu_supports_bf16
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.precision_trial import MIN_AGREEMENT, MIN_SPEEDUP, PrecisionTrial
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.segmenter import build_segmenter

META = ModelMeta("tiny", ["a", "b", "c"], [(255, 0, 0), (0, 255, 0), (0, 0, 255)], 1.0, 64)


def _trial(agreement: float, speedup: float) -> PrecisionTrial:
    return PrecisionTrial(4, 10.0, 10.0 * speedup, agreement, 0.01)


def test_bf16_is_kept_only_when_faster_and_as_accurate() -> None:
    assert MIN_AGREEMENT == 0.995  # issue 8's goal for argmax agreement
    assert _trial(MIN_AGREEMENT, MIN_SPEEDUP).bf16_chosen
    assert _trial(1.0, 3.0).bf16_chosen
    assert not _trial(0.9949, 3.0).bf16_chosen  # AMX speed does not buy lost labels
    assert not _trial(1.0, 1.09).bf16_chosen  # within noise: fp32 is the exact reference
    assert not _trial(1.0, 0.7).bf16_chosen  # AVX512-BF16 without AMX, as measured
    d = _trial(0.999, 0.7).as_dict()
    assert d["chosen"] == "fp32" and d["speedup"] == pytest.approx(0.7)
    assert "0.70x" in d["reason"] and "99.90 %" in d["reason"]


def _model() -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel(
        build_classifier("resnet10t", "cam", 3),
        build_segmenter("tu-resnet10t", 3, decoder_channels=16),
        META,
    )


def _tiles(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g)


def test_trial_measures_what_bf16_changes_on_these_tiles() -> None:
    """Agreement and max |dp| are those of fp32 vs bf16 predictions computed directly."""
    model = _model().to_device("cpu", "fp32")
    tiles = _tiles()
    ref, _ = model.predict(tiles[:4])
    low, _ = model.to_device("cpu", "bf16").predict(tiles[:4])
    model.to_device("cpu", "fp32")
    model.precision_pending = True  # as 'auto' leaves it on a CPU with bf16 hardware
    trial = model.settle_precision(tiles)
    assert trial is not None and trial.tiles == 4
    assert trial.agreement == pytest.approx((ref.argmax(1) == low.argmax(1)).float().mean().item())
    assert trial.max_prob_diff == pytest.approx((ref - low).abs().max().item())
    assert trial.fp32_tiles_per_s > 0 and trial.bf16_tiles_per_s > 0
    assert model.autocast_dtype == (torch.bfloat16 if trial.bf16_chosen else None)
    assert not model.precision_pending and model.settle_precision(tiles) is None  # once
    report = model.precision_report()
    assert report["autocast"] == ("bf16" if trial.bf16_chosen else "fp32")
    assert report["trial"]["tiles"] == 4 and report["channels_last"] is True
    # a first chunk with one tile: the tile is repeated so the trial batch stays 4
    model.precision_pending = True
    one = model.settle_precision(tiles[:1])
    four = tiles[:1].repeat(4, 1, 1, 1)
    ref1, _ = model.to_device("cpu", "fp32").predict(four)
    low1, _ = model.to_device("cpu", "bf16").predict(four)
    assert one is not None and one.tiles == 4
    assert one.agreement == pytest.approx((ref1.argmax(1) == low1.argmax(1)).float().mean().item())


def test_auto_waits_for_a_trial_only_on_a_bf16_cpu() -> None:
    model = _model().to_device("cpu", "auto")
    assert model.precision_pending == cpu_supports_bf16()
    assert model.autocast_dtype is None  # fp32 until decided, whatever the CPU
    assert model.precision_report()["autocast"].startswith("fp32")
    for fixed in ("fp32", "bf16"):
        model.to_device("cpu", fixed)
        assert not model.precision_pending and model.settle_precision(_tiles()) is None
