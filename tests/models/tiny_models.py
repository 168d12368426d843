"""The tiny real segmentation model (resnet10t classifier and segmenter, 64 px tiles) that
the precision and validation-patch tests label real tissue with."""

from __future__ import annotations

import torch

from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.segmenter import build_segmenter

TILE = 64
META = ModelMeta("tiny", ["a", "b", "c"], [(255, 0, 0), (0, 255, 0), (0, 0, 255)], 1.0, TILE)


def tiny_segmentation_model() -> SegmentationModel:
    """The same random weights on every call (seed 0)."""
    torch.manual_seed(0)
    return SegmentationModel(
        build_classifier("resnet10t", "cam", 3),
        build_segmenter("tu-resnet10t", 3, decoder_channels=16),
        META,
    )
