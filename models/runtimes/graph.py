"""The one inference of a tile, as a module: what torch runs and OpenVINO compiles. uint8
tiles (N, T, T, 3) -> (uint8 probabilities (N, K, h, w), uint8 labels (N, h, w), float32
classifier probabilities (N, K)): normalisation, classifier, segmenter, gate and reduction
for one tile geometry. There is no other copy of this sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..device import autocast
from ..gate import gated_probabilities
from ..reduction import reduce_tiles
from .tile_io import Geometry

if TYPE_CHECKING:
    from ..segmentation_model import SegmentationModel


class TileGraph(nn.Module):
    """A SegmentationModel's networks and normalisation at one `Geometry` and autocast
    `dtype` (None: fp32), as a pure module sharing the model's weights."""

    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(
        self, model: SegmentationModel, geometry: Geometry, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.classifier, self.segmenter = model.classifier, model.segmenter
        self.register_buffer("mean", model.mean.detach().clone().float())
        self.register_buffer("std", model.std.detach().clone().float())
        self.geometry = geometry
        self.epsilon = model.meta.gate_epsilon if geometry.gate else None
        self.dtype = dtype

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`tiles` (N, T, T, 3) uint8: the layout tiles are cut in, so a runtime reads them
        where they lie; the permuted view is channels last, as the weights are."""
        x = tiles.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        with autocast(x.device, self.dtype):
            cls_logits = self.classifier(x)
            seg_logits = self.segmenter(x)
        seg_probs, cls_probs, keep = gated_probabilities(seg_logits, cls_logits, self.epsilon)
        g = self.geometry
        probs, labels = reduce_tiles(seg_probs, seg_logits, keep, g.margin, g.core, g.downsample)
        return probs, labels, cls_probs
