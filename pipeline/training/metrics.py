"""Segmentation metrics of the paper: one confusion matrix accumulated over a whole split.

Per-image averages overweight small patches; the official WSSS-Tissue code sums one
confusion matrix over the split and ignores background/exclude pixels, and so do we.
Predictions outside 0..K-1 (e.g. background in a pseudo mask) count as misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Scores:
    """IoU per class (NaN where a class is absent from both truth and prediction)."""

    iou: np.ndarray
    miou: float
    fwiou: float
    acc: float

    def as_dict(self, classes: list[str] | tuple[str, ...]) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "fwiou": self.fwiou,
            "acc": self.acc,
            "iou": {
                c: (None if np.isnan(v) else float(v))
                for c, v in zip(classes, self.iou, strict=True)
            },
        }


class ConfusionMatrix:
    """Rows = ground truth 0..K-1; columns = prediction 0..K-1 plus one column for 'other'."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one batch; target pixels outside 0..K-1 (background/exclude) are ignored."""
        pred = np.asarray(pred).astype(np.int64).ravel()
        target = np.asarray(target).astype(np.int64).ravel()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and target {target.shape} differ")
        keep = (target >= 0) & (target < self.k)
        p = pred[keep]
        p = np.where((p >= 0) & (p < self.k), p, self.k)
        self.matrix += np.bincount(
            target[keep] * (self.k + 1) + p, minlength=self.k * (self.k + 1)
        ).reshape(self.k, self.k + 1)

    def scores(self) -> Scores:
        """IoU = TP / (TP + FP + FN); FwIoU weights IoU by ground-truth frequency."""
        hist = self.matrix.astype(np.float64)
        tp = np.diag(hist[:, : self.k])
        gt = hist.sum(1)
        predicted = hist[:, : self.k].sum(0)
        total = hist.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / (gt + predicted - tp)
        freq = gt / total if total else np.zeros_like(gt)
        valid = freq > 0
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        return Scores(
            iou=iou,
            miou=miou,
            fwiou=float((freq[valid] * iou[valid]).sum()) if total else float("nan"),
            acc=float(tp.sum() / total) if total else float("nan"),
        )
