"""LFI-CAM head (Lee et al. 2021): a feature-importance network (FIN) learns channel weights.

Each feature map m_c, min-max normalised to [0, 1], masks a grey, downsampled copy of the
input; the small FIN scores each masked image; softmax over channels gives importances
w_c. The attention A = relu(sum_c w_c m_c) / max is applied as m * (1 + A) (residual
attention as in ABN, so features never vanish early in training), then GAP + fc.
Learning importances instead of the map itself gives steadier maps than ABN.

Unlike the seed's reference design (residual blocks over all masked images, attention
normalised over the batch and detached), everything here is per patch and on the graph,
so a tile's output never depends on its batch-mates; docs/models.md gives the reasons.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_segment.errors import ConfigError

from .base import DEFAULT_DROPOUT, ClassifierHead

_EPS = 1e-6


def normalise_channels(feats: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (sample, channel) map to [0, 1]; constant maps become 0."""
    lo = feats.amin(dim=(2, 3), keepdim=True)
    hi = feats.amax(dim=(2, 3), keepdim=True)
    return (feats - lo) / (hi - lo).clamp_min(_EPS)


def grey_like(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Channel-mean grey image (N, 1, h, w) downsampled (area) to the feature-map size."""
    return F.adaptive_avg_pool2d(image.mean(dim=1, keepdim=True), size)


class FeatureImportanceNet(nn.Module):
    """Scores one masked grey image (B, 1, h, w) -> (B,); shared by all channels."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 1),
        )

    def forward(self, masked: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.net(masked)
        return scores.squeeze(1)


class LFICAMHead(ClassifierHead):
    """GAP + fc over LFI-attended features; `importance()` exposes w (N, C) for LFI-CAM."""

    kind = "lficam"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        dropout: float = DEFAULT_DROPOUT,
        fin_width: int = 16,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=False, dropout=dropout)
        self.fin_width = fin_width
        self.fin = FeatureImportanceNet(fin_width)

    def importance(self, feats: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Channel importances (N, C), softmax over channels."""
        if image is None:
            raise ConfigError("the lficam head needs the input image (pass it to the head)")
        n, c, h, w = feats.shape
        masked = grey_like(image, (h, w)) * normalise_channels(feats)
        scores = self.fin(masked.reshape(n * c, 1, h, w)).reshape(n, c)
        return torch.softmax(scores, dim=1)

    def attention(self, feats: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Class-agnostic attention (N, 1, h, w) in [0, 1]."""
        w = self.importance(feats, image)
        att = F.relu((feats * w[:, :, None, None]).sum(dim=1, keepdim=True))
        return att / att.amax(dim=(2, 3), keepdim=True).clamp_min(_EPS)

    def attended(self, feats: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Features after attention: m * (1 + A)."""
        return feats * (1.0 + self.attention(feats, image))

    def class_maps(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Score maps of the attended features, so their mean is the logit (as for CAM)."""
        return F.conv2d(self.attended(feats, image), self.fc.weight)

    def lfi_maps(self, feats: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Per-class LFI-CAM (N, K, h, w) = relu(sum_c w_c * fc_kc * m_c).

        The paper's map is class-agnostic (sum_c w_c m_c); for multi-label pseudo masks we
        weight each channel by its learned importance and by the class's fc weight.
        """
        w = self.importance(feats, image)
        weighted = feats * w[:, :, None, None]
        return F.relu(F.conv2d(weighted, self.fc.weight))

    def forward(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.attended(feats, image)
        return self.classify(self.dropout(feats).mean(dim=(2, 3)))

    def config(self) -> dict[str, Any]:
        return {"dropout": self.dropout_p, "fin_width": self.fin_width}
