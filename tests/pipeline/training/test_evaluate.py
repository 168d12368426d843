"""Evaluation plumbing on the real sample: perfect predictions score exactly 1, labels from masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsi_segment.pipeline.training.datasets import open_dataset
from wsi_segment.pipeline.training.evaluate import GateCheck, present_labels, score_split

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"


def test_ground_truth_scores_one_and_background_is_ignored() -> None:
    ds = open_dataset(SAMPLE)
    # predicting the truth everywhere (and class 0 on background pixels) is perfect
    (cm,) = score_split(ds, "test", lambda img, gt: [torch.where(gt == 4, 0, gt)], batch_size=4)
    s = cm.scores()
    assert s.miou == 1.0 and s.acc == 1.0 and s.fwiou == 1.0
    total = sum(int((ds.read_mask(it.mask) < 4).sum()) for it in ds.mask_items("test"))
    assert cm.matrix.sum() == total


def test_constant_prediction_matches_hand_count() -> None:
    ds = open_dataset(SAMPLE)
    (cm,) = score_split(ds, "val", lambda img, gt: [torch.full_like(gt, 3)], batch_size=2)
    # val masks: TAS pixels 49962 + 4369, others 1096 TE + 41585 LYM + 20848 TE + 27930 NEC
    tas, other = 49962 + 4369, 1096 + 41585 + 20848 + 27930
    assert cm.matrix[:, 3].sum() == tas + other
    s = cm.scores()
    assert np.isclose(s.iou[3], tas / (tas + other)) and np.isclose(s.acc, tas / (tas + other))


def test_present_labels() -> None:
    gt = torch.tensor([[[0, 4], [2, 2]], [[4, 4], [4, 4]]], dtype=torch.uint8)
    assert present_labels(gt, 4).tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]


def test_gate_check_counts_gated_present_classes() -> None:
    # patch 0: classes 0 (3 px) and 2 (1 px); patch 1: class 1 (4 px)
    gt = torch.tensor([[[0, 0], [0, 2]], [[1, 1], [1, 1]]], dtype=torch.uint8)
    probs = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.05, 0.8, 0.2, 0.1]])
    check = GateCheck(4, epsilon=0.1)
    check.update(probs, gt)
    d = check.as_dict()
    # present: (0,0) kept, (0,2) gated at exactly eps, (1,1) kept; absent kept: (0,1), (1,2)
    assert d["present_classes"] == 3 and d["present_gated"] == 1
    assert d["absent_classes"] == 5 and d["absent_kept"] == 2
    assert d["tissue_pixels_gated"] == 1 / 8 and d["epsilon"] == 0.1
