"""Multi-layer pseudo-supervision loss and the classification gate, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from wsi_segment.errors import ConfigError
from wsi_segment.models.gate import apply_gate
from wsi_segment.models.segmenter import (
    SEG_LOSSES,
    multilayer_pseudo_loss,
    official_pseudo_loss,
)

# logits (1, K=3, 1, 2): pixel a = [2, 0, -1], pixel b = [0, 1, 0]
LOGITS = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]]])


def _nll(pixel_logits: list[float], target: int) -> float:
    return -(pixel_logits[target] - math.log(sum(math.exp(v) for v in pixel_logits)))


def test_multilayer_loss_is_weighted_ce_ignoring_background() -> None:
    a, b = [2.0, 0.0, -1.0], [0.0, 1.0, 0.0]
    masks = [
        torch.tensor([[[0, 1]]], dtype=torch.uint8),  # both pixels labelled
        torch.tensor([[[255, 2]]], dtype=torch.uint8),  # pixel a is background
        torch.tensor([[[1, 255]]], dtype=torch.uint8),  # pixel b is background
    ]
    expected = 0.2 * (_nll(a, 0) + _nll(b, 1)) / 2 + 0.2 * _nll(b, 2) + 0.6 * _nll(a, 1)
    got = multilayer_pseudo_loss(LOGITS, masks)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # An all-background mask adds 0, not NaN.
    empty = torch.full((1, 1, 2), 255, dtype=torch.uint8)
    got = multilayer_pseudo_loss(LOGITS, [masks[0], empty, empty])
    assert got.item() == pytest.approx(0.2 * (_nll(a, 0) + _nll(b, 1)) / 2, rel=1e-6)
    with pytest.raises(ConfigError):
        multilayer_pseudo_loss(LOGITS, masks[:2])


def test_gate_zeroes_exactly_classes_at_or_below_epsilon() -> None:
    seg = torch.rand(2, 3, 4, 4) + 0.1
    cls = torch.tensor([[0.1, 0.1000001, 0.5], [0.05, 1.0, 0.0999]])
    out = apply_gate(seg, cls, 0.1)
    keep = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    for n in range(2):
        for k in range(3):
            if keep[n, k]:
                assert torch.equal(out[n, k], seg[n, k])
            else:
                assert (out[n, k] == 0).all()


def test_official_loss_adds_a_fixed_background_class_and_divides_by_the_batch() -> None:
    """Pixel a is tissue (class 0), pixel b background (255): logits gain a fifth class, 0 at a
    and 100 at b; every pixel counts; the mean is divided again by the batch size."""
    a, b = [2.0, 0.0, -1.0], [0.0, 1.0, 0.0]
    logits = LOGITS.double()
    mask = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    per_image = (_nll([*a, 0.0], 0) + _nll([*b, 100.0], 3)) / 2
    got = official_pseudo_loss(logits, [mask, mask, mask], (0.2, 0.2, 0.6))
    assert float(got) == pytest.approx(per_image, rel=1e-12)
    two = official_pseudo_loss(logits.repeat(2, 1, 1, 1), [mask.repeat(2, 1, 1)] * 3)
    assert float(two) == pytest.approx(per_image / 2, rel=1e-12)  # divided by n = 2
    # background comes from the deepest (last) mask; shallower masks' labels are their own
    shallow = torch.tensor([[[1, 255]]], dtype=torch.uint8)
    got = official_pseudo_loss(logits, [shallow, mask, mask], (0.2, 0.2, 0.6))
    want = 0.2 * (_nll([*a, 0.0], 1) + _nll([*b, 100.0], 3)) / 2 + 0.8 * per_image
    assert float(got) == pytest.approx(want, rel=1e-12)
    assert SEG_LOSSES["official"] is official_pseudo_loss
    assert SEG_LOSSES["ours"] is multilayer_pseudo_loss


def test_loss_scale_ratio_is_about_batch_over_labelled_fraction() -> None:
    """docs/training.md: ours / official is about n / f (n batch size, f labelled fraction)."""
    gen = torch.Generator().manual_seed(0)
    n, f = 8, 0.4
    logits = torch.randn(n, 4, 32, 32, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (n, 32, 32), generator=gen).to(torch.uint8)
    labels[torch.rand(n, 32, 32, generator=gen) >= f] = 255
    masks = [labels] * 3
    ratio = float(multilayer_pseudo_loss(logits, masks) / official_pseudo_loss(logits, masks))
    assert 0.8 * n / f < ratio < n / f  # the fifth logit raises tissue CE a little
