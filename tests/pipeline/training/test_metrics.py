"""Metrics against confusion matrices computed by hand."""

from __future__ import annotations

import math

import numpy as np

from wsi_segment.pipeline.training.metrics import ConfusionMatrix


def test_hand_computed_two_classes_with_ignore() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 2]))  # last pixel ignored
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0]]
    s = cm.scores()
    assert np.allclose(s.iou, [1 / 2, 2 / 3])
    assert math.isclose(s.miou, 7 / 12)
    assert math.isclose(s.acc, 3 / 4)
    assert math.isclose(s.fwiou, 0.5 * 0.5 + 0.5 * 2 / 3)


def test_accumulates_over_batches_and_counts_other_predictions_as_misses() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]]))
    cm.update(np.array([2, 0]), np.array([0, 2]))  # predicted background on class 0; ignored
    assert cm.matrix.tolist() == [[1, 1, 1], [0, 2, 0]]
    s = cm.scores()
    assert np.allclose(s.iou, [1 / 3, 2 / 3])
    assert math.isclose(s.acc, 3 / 5)
    assert math.isclose(s.fwiou, 3 / 5 * 1 / 3 + 2 / 5 * 2 / 3)


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1]), np.array([0, 0, 1]))
    s = cm.scores()
    assert s.iou[:2].tolist() == [1.0, 1.0] and math.isnan(s.iou[2])
    assert s.miou == 1.0 and s.acc == 1.0 and s.fwiou == 1.0
    assert s.as_dict(["a", "b", "c"])["iou"] == {"a": 1.0, "b": 1.0, "c": None}
