"""The segmentation model: classifier + DeepLabV3+ + gate, its weights and metadata.

This class holds the weights (fp32, channels last: faster on oneDNN and tensor cores alike),
the metadata and `predict`, the full float maps for training and tests. What the slide path
runs of it is its tile graph (models/runtimes/graph.py, the one definition of a tile's
inference), executed by the runtime a run opened (`models.runtimes.select.open_runtime`,
which opens a `models.model_files.ModelSource`: the model's files, identity and validation
patches).
"""

from __future__ import annotations

import torch
from torch import nn

from .device import autocast, pick_device
from .gate import gated_probabilities
from .meta import ModelMeta


class SegmentationModel(nn.Module):
    """Holds `classifier` (x -> logits (N, K)), `segmenter` (x -> logits (N, K, H, W)), `meta`.

    Any modules with those signatures work (tests use fixed analytic ones).
    """

    mean: torch.Tensor  # the normalisation's, (1, 3, 1, 1): buffers registered in __init__
    std: torch.Tensor

    def __init__(self, classifier: nn.Module, segmenter: nn.Module, meta: ModelMeta) -> None:
        super().__init__()
        self.classifier = classifier
        self.segmenter = segmenter
        self.meta = meta
        norm = meta.normalisation
        self.register_buffer("mean", torch.tensor(norm["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm["std"]).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.mean.device

    def to_device(self, device: str | torch.device) -> SegmentationModel:
        """Move the weights to `device` (cpu | cuda; a missing GPU is an error naming the
        fix), channels last."""
        self.to(pick_device(device))
        self.to(memory_format=torch.channels_last)
        return self

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 (or float already in [0, 1]) on any device -> normalised float here."""
        x = tiles.to(self.device, non_blocking=True)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(
        self, tiles: torch.Tensor, gate: bool = True, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(seg_probs (N, K, T, T), cls_probs (N, K)), CPU float32: the full maps the tile
        graph reduces, for training code and tests (autocast `dtype` around the networks).

        seg_probs = softmax of the DeepLabV3+ logits over K, with class k zeroed in tiles
        where the classifier's sigmoid probability <= meta.gate_epsilon (if `gate`).
        """
        if tiles.ndim != 4 or tiles.shape[1] != 3:
            raise ValueError(f"predict expects tiles (N, 3, H, W), got {tuple(tiles.shape)}")
        self.eval()
        x = self.preprocess(tiles)
        with autocast(self.device, dtype):
            cls_logits, seg_logits = self.classifier(x), self.segmenter(x)
        epsilon = self.meta.gate_epsilon if gate else None
        seg_probs, cls_probs, _keep = gated_probabilities(seg_logits, cls_logits, epsilon)
        return seg_probs.contiguous().cpu(), cls_probs.cpu()
