"""PCAM head: probabilistic-CAM pooling (Ye et al. 2020).

Per class k: s_k = fc_k * m + b_k at every position, p_k = sigmoid(s_k), weights
a_k = p_k / sum(p_k); the pooled feature is sum(a_k * m) and the same fc gives the logit.
Pooling where the class is likely (instead of everywhere) sharpens localisation.

Dropout acts on the pooled feature, element-wise and per class, as Ye et al.'s code
(jfhealthcare/Chexpert: `PcamPool`, then `F.dropout` on the pooled vector): the weights come
from the features as they are, so training pools with the weight maps inference uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DEFAULT_DROPOUT, ClassifierHead


def pcam_pool(feats: torch.Tensor, score_maps: torch.Tensor) -> torch.Tensor:
    """Per-class pooled features (N, K, C) from features (N, C, h, w) and score maps (N, K, h, w)."""
    prob = torch.sigmoid(score_maps)
    weights = prob / prob.sum(dim=(2, 3), keepdim=True)
    return torch.einsum("nkhw,nchw->nkc", weights, feats)


class PCAMHead(ClassifierHead):
    """logit_k = fc_k . dropout(pcam_pool(m)_k) + b_k (fc with bias, as in Ye et al.)."""

    kind = "pcam"

    def __init__(
        self, in_channels: int, num_classes: int, *, dropout: float = DEFAULT_DROPOUT
    ) -> None:
        super().__init__(in_channels, num_classes, bias=True, dropout=dropout)

    def forward(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        pooled = pcam_pool(feats, self.class_maps(feats))
        pooled = F.dropout(pooled, p=self.dropout.p, training=self.training)
        w = self.fc.weight.flatten(1)
        assert self.fc.bias is not None  # built with bias=True
        return (pooled * w.unsqueeze(0)).sum(dim=2) + self.fc.bias
