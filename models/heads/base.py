"""The one interface every classifier head implements.

A head turns the deepest feature map into multi-label logits (N, K) and exposes its class
score maps, so CAM methods and pseudo masks work the same for every head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The official WSSS-Tissue classifier applies Dropout2d(0.5) to the (attended) features on
# every training pass; it regularises the classifier and never acts at inference.
DEFAULT_DROPOUT = 0.5


class ClassifierHead(nn.Module):
    """Base: a 1x1-conv classifier `fc` over C channels for K classes, plus feature dropout.

    `dropout` is channel dropout (Dropout2d) on the feature map (after any attention) before
    pooling, as in the official code (PCAM drops its pooled feature instead); it acts in
    training only.
    """

    kind = "base"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        bias: bool = False,
        dropout: float = DEFAULT_DROPOUT,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dropout_p = dropout
        self.fc = nn.Conv2d(in_channels, num_classes, 1, bias=bias)
        nn.init.xavier_uniform_(self.fc.weight)
        self.dropout = nn.Dropout2d(dropout)

    def class_maps(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Class score maps (N, K, h, w) before ReLU: the fc applied at every position."""
        return F.conv2d(feats, self.fc.weight, self.fc.bias)

    def cam(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Class activation maps (N, K, h, w): ReLU of the class score maps."""
        return F.relu(self.class_maps(feats, image))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """fc on pooled features (N, C) -> logits (N, K)."""
        return F.linear(pooled, self.fc.weight.flatten(1), self.fc.bias)

    def forward(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this head (besides in_channels / num_classes)."""
        return {"dropout": self.dropout_p}
