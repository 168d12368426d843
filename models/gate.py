"""Classification gate: a class the classifier rules out cannot appear in the segmentation.

For each tile, class k's segmentation probability is zeroed wherever the classifier's
probability y_k <= epsilon. (The official code multiplies DeepLabV3+ logits; we zero the
softmax probabilities instead, which removes the class outright and keeps values in
[0, 1]; gated tiles are not renormalised.)
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
