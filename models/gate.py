"""Classification gate: a class the classifier rules out cannot appear in the segmentation.

For each tile, class k's segmentation probability is zeroed wherever the classifier's
probability y_k <= epsilon. (The official code multiplies DeepLabV3+ logits; we zero the
softmax probabilities instead, which removes the class outright and keeps values in
[0, 1]; gated tiles are not renormalised.)

`gated_probabilities` is the one place logits become what the gate leaves: the slide path
(`SegmentationModel`), `evaluate` and stage-3 validation all start from it.
"""

from __future__ import annotations

import torch

from .meta import DEFAULT_EPSILON


def gate_mask(cls_probs: torch.Tensor, epsilon: float = DEFAULT_EPSILON) -> torch.Tensor:
    """(N, K) float: 1 where the class is kept (y_k > epsilon), 0 where gated."""
    return (cls_probs > epsilon).to(cls_probs.dtype)


def apply_gate(
    seg_probs: torch.Tensor, cls_probs: torch.Tensor, epsilon: float = DEFAULT_EPSILON
) -> torch.Tensor:
    """seg_probs (N, K, H, W) with class k zeroed in tile n when cls_probs[n, k] <= epsilon."""
    keep = gate_mask(cls_probs, epsilon).to(seg_probs.dtype)
    return seg_probs * keep[:, :, None, None]


def gated_probabilities(
    seg_logits: torch.Tensor, cls_logits: torch.Tensor, epsilon: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(seg_probs (N, K, H, W) float32, cls_probs (N, K), keep (N, K) bool) from the logits.

    seg_probs = softmax over K, with class k zeroed in tile n where cls_probs[n, k] <=
    epsilon; `keep` says which classes the gate kept. `epsilon` None is no gate: every
    class kept.
    """
    seg_probs = torch.softmax(seg_logits.float(), dim=1)
    cls_probs = torch.sigmoid(cls_logits.float())
    if epsilon is None:
        return seg_probs, cls_probs, torch.ones_like(cls_probs, dtype=torch.bool)
    seg_probs = apply_gate(seg_probs, cls_probs, epsilon)
    return seg_probs, cls_probs, gate_mask(cls_probs, epsilon) > 0
