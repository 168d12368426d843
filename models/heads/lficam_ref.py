"""LFI-CAM head in the reference form (TrustworthyAI-kr/LFI-CAM, `resnet_lfiv2`).

Beside `lficam` (ours: a small FIN scoring each channel's masked image on its own), this is
the authors' own design, for comparison: each feature map m_c is min-max normalised to
[0, 1] (a constant map becomes 1, and positions where m_c is 0 become 0), multiplied by the
grey input resized (bilinear) to the feature size; the feature-importance network, four
3x3 conv-BN-ReLU layers across all C channels (C -> C), then global average pooling and a
softmax over channels, gives importances w_c; the attention is the class-agnostic map
A = relu(sum_c w_c m_c), min-max normalised per patch (a constant map stays as it is);
features m * A + m, GAP, fc (with bias). The four C x C convolutions make it heavy
(4 x 9 C^2 weights: 9.4 M for C = 512, 151 M for C = 2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsi_segment.errors import ConfigError

from .base import DEFAULT_DROPOUT, ClassifierHead


def reference_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) min-max over positions, as `resnet_lfiv2` does it: a constant
    map (0 / 0 there) becomes 1, then every position where the map is 0 becomes 0."""
    lo = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - lo
    scaled = torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, 1.0), 1.0)
    return torch.where(maps == 0, 0.0, scaled)


def _fin(channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class LFICAMRefHead(ClassifierHead):
    """GAP + fc over features attended by the reference LFI-CAM map."""

    kind = "lficam-ref"

    def __init__(
        self, in_channels: int, num_classes: int, *, dropout: float = DEFAULT_DROPOUT
    ) -> None:
        super().__init__(in_channels, num_classes, bias=True, dropout=dropout)
        self.fin = _fin(in_channels)
        for m in self.fin.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def importance(self, feats: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Channel importances (N, C): softmax over channels of the FIN's pooled output."""
        if image is None:
            raise ConfigError("the lficam-ref head needs the input image (pass it to the head)")
        grey = F.interpolate(
            image.mean(dim=1, keepdim=True), size=feats.shape[-2:], mode="bilinear",
            align_corners=False,
        )  # fmt: skip
        scores = self.fin(reference_normalise(feats) * grey).mean(dim=(2, 3))
        return torch.softmax(scores, dim=1)

    def attention(self, feats: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """The class-agnostic LFI-CAM map (N, 1, h, w), min-max normalised per patch."""
        w = self.importance(feats, image)
        raw = F.relu((feats * w[:, :, None, None]).sum(dim=1, keepdim=True))
        lo = raw.amin(dim=(2, 3), keepdim=True)
        span = raw.amax(dim=(2, 3), keepdim=True) - lo
        return torch.where(span > 0, (raw - lo) / torch.where(span > 0, span, 1.0), raw)

    def attended(self, feats: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Features after attention: m * A + m."""
        return feats * self.attention(feats, image) + feats

    def class_maps(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Score maps of the attended features (with the bias), whose mean is the logit."""
        return F.conv2d(self.attended(feats, image), self.fc.weight, self.fc.bias)

    def forward(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.attended(feats, image)
        return self.classify(self.dropout(feats).mean(dim=(2, 3)))
