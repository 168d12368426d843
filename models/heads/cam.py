"""CAM head (Zhou et al. 2016): global average pooling, then a bias-free 1x1 conv.

Because pooling and the fc are both linear, the logit of class k is exactly the mean of
its class score map: CAM is the map the classifier actually sums.
"""

from __future__ import annotations

import torch

from .base import DEFAULT_DROPOUT, ClassifierHead


class CAMHead(ClassifierHead):
    """logits = fc(GAP(features)); CAM = relu(fc applied per position)."""

    kind = "cam"

    def __init__(
        self, in_channels: int, num_classes: int, *, dropout: float = DEFAULT_DROPOUT
    ) -> None:
        super().__init__(in_channels, num_classes, bias=False, dropout=dropout)

    def forward(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.dropout(feats).mean(dim=(2, 3)))
