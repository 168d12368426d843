"""box_mean: the one downsampling rule of every thumbnail (exact mean, half to even, white edges)."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_segment.wsi.box_mean import box_mean


def float_reference(img: np.ndarray, k: int) -> np.ndarray:
    """The rule written the slow way: pad with white, average in float64, np.round."""
    h, w = -(-img.shape[0] // k), -(-img.shape[1] // k)
    pad = ((0, h * k - img.shape[0]), (0, w * k - img.shape[1]), (0, 0))
    padded = np.pad(img, pad, constant_values=255).astype(np.float64)
    return np.round(padded.reshape(h, k, w, k, img.shape[2]).mean(axis=(1, 3))).astype(np.uint8)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7, 15, 16, 17, 64])
@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 64, 3), (130, 70, 4), (5, 200, 1)])
def test_equals_the_float_rule_exactly(k, shape):
    rng = np.random.default_rng(k * 1000 + shape[0])
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    got = box_mean(img, k)
    assert got.dtype == np.uint8 and got.shape == (-(-shape[0] // k), -(-shape[1] // k), shape[2])
    assert np.array_equal(got, float_reference(img, k))


def test_halves_round_to_even_and_edges_count_white():
    img = np.array([[[0], [1]], [[2], [3]]], np.uint8)  # mean 1.5 -> 2
    assert box_mean(img, 2)[0, 0, 0] == 2
    img = np.array([[[0], [1]], [[1], [2]]], np.uint8)  # mean 1.0
    assert box_mean(img, 2)[0, 0, 0] == 1
    img = np.array([[[2], [3]], [[2], [3]]], np.uint8)  # mean 2.5 -> 2 (half to even)
    assert box_mean(img, 2)[0, 0, 0] == 2
    one_black = np.zeros((1, 1, 3), np.uint8)  # 0 + 3 x 255 white, / 4 = 191.25
    assert box_mean(one_black, 2).tolist() == [[[191, 191, 191]]]


def test_large_blocks_do_not_overflow():
    img = np.full((300, 300, 3), 255, np.uint8)
    assert (box_mean(img, 300) == 255).all()
    assert (box_mean(img[:, :, :], 260) == 255).all()


@pytest.mark.parametrize(
    ("img", "k"),
    [
        (np.zeros((4, 4), np.uint8), 2),
        (np.zeros((4, 4, 3), np.float32), 2),
        (np.zeros((4, 4, 3), np.uint8), 0),
    ],
)
def test_rejects_what_it_cannot_average(img, k):
    with pytest.raises(ValueError):
        box_mean(img, k)
