"""What leaves the device in the slide path: each tile's core, averaged, as uint8 + labels.

The slide path stores, per output pixel (d x d model pixels of a tile's centre core; the
overlap margin is cropped, docs/architecture.md), uint8 class probabilities and a label. Both
are made here, on the model's device, so only they cross to the host, not the full float32
maps. The label rule (`label_pixels`) is the method's argmax of the gated output, taken
before quantisation, so it is the same for every caller: the slide path, `evaluate` and
stage-3 validation (`tile_labels`) label a tile alike:

- the kept class with the highest gated probability (even if every kept probability rounds
  to 0 in uint8: the gate removed the class the segmenter was sure of);
- where every kept probability underflowed to exactly 0 in float32 (logits ~100 apart), the
  kept class with the highest mean logit;
- `UNCLASSIFIED` in a tile whose classes the gate removed all: the classifier rules every
  class out there, and its stored probabilities are all 0. It is tissue, never `NODATA`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .gate import gated_probabilities
from .labels import NODATA as NODATA  # re-exported: the slide path's "not analysed"
from .labels import UNCLASSIFIED


def quantise(probs: torch.Tensor) -> torch.Tensor:
    """float probabilities in [0, 1] -> uint8 0..255, rounding half to even (as numpy.rint)."""
    return torch.clamp(torch.round(probs * 255.0), 0, 255).to(torch.uint8)


def label_pixels(
    probs: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor, unclassified: int = UNCLASSIFIED
) -> torch.Tensor:
    """Labels (N, H, W) int64 of gated probabilities (N, K, H, W): the module's rule.

    argmax of `probs`; where every kept class is 0 (underflow), the kept class with the
    highest `logits`; `unclassified` in tiles where `keep` (N, K) holds no class.
    """
    labels = probs.argmax(dim=1)
    kept = keep[:, :, None, None]
    fallback = logits.masked_fill(~kept, float("-inf")).argmax(dim=1)
    labels = torch.where(probs.amax(dim=1) > 0, labels, fallback)
    return labels.masked_fill(~keep.any(dim=1)[:, None, None], unclassified)


def reduce_tiles(
    seg_probs: torch.Tensor,
    seg_logits: torch.Tensor,
    keep: torch.Tensor,
    margin: int,
    core: int,
    downsample: int,
    unclassified: int = UNCLASSIFIED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 probs (N, K, h, w), uint8 labels (N, h, w)) of the tiles' cores, on their device.

    `seg_probs` (N, K, T, T) float32 are the gated probabilities, `seg_logits` the raw logits,
    `keep` (N, K) bool the classes the gate kept. The core is `[margin, margin + core)` in
    both axes, averaged over `downsample` x `downsample` blocks, then labelled by
    `label_pixels` (`unclassified` where no class is kept).
    """
    t = seg_probs.shape[-1]
    if seg_probs.shape[-2] != t:
        raise ValueError(f"tiles must be square, got {tuple(seg_probs.shape[-2:])}")
    if margin < 0 or core <= 0 or margin + core > t or core % downsample:
        raise ValueError(
            f"core {core} at margin {margin} must fit the tile {t} and be a multiple of "
            f"the downsample {downsample}"
        )
    crop = slice(margin, margin + core)
    probs = seg_probs[:, :, crop, crop].float()
    logits = seg_logits[:, :, crop, crop].float()
    if downsample > 1:
        probs = F.avg_pool2d(probs, downsample)
        logits = F.avg_pool2d(logits, downsample)
    labels = label_pixels(probs, logits, keep, unclassified)
    return quantise(probs), labels.to(torch.uint8)


def tile_labels(
    seg_logits: torch.Tensor, cls_logits: torch.Tensor | None, epsilon: float | None
) -> torch.Tensor:
    """uint8 labels (N, T, T) of whole tiles from a forward's logits, by the slide path's
    rule (gate, fallback, `UNCLASSIFIED`): what the tile graph at `Geometry.whole(T)` labels.
    No classifier logits, or `epsilon` None, is no gate. For training code that holds the
    segmenter and the classifier as separate modules (stage-3 validation)."""
    if cls_logits is None:
        cls_logits = seg_logits.new_zeros(seg_logits.shape[:2])
        epsilon = None
    seg_probs, _cls, keep = gated_probabilities(seg_logits, cls_logits, epsilon)
    return label_pixels(seg_probs, seg_logits.float(), keep).to(torch.uint8)


class HostCopier:
    """Copies a batch's small outputs to the host.

    On CUDA: into pinned buffers kept from batch to batch (grown, never shrunk), with
    `non_blocking=True`, then a CUDA event is waited on before the host reads them; the
    caller gets its own copy, so the buffers are free for the next batch at once. On the
    CPU the tensors are already on the host: the same call returns them contiguous.
    """

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles of a model start with no buffers and their own lock."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        HostCopier.__init__(self)

    def to_host(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if all(t.device.type == "cpu" for t in tensors):
            return [t.contiguous() for t in tensors]
        with self._lock:
            host = [self._buffer(i, t) for i, t in enumerate(tensors)]
            for h, t in zip(host, tensors, strict=True):
                h.copy_(t.contiguous(), non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(tensors[0].device))
            event.synchronize()
            return [h.clone() for h in host]

    def _buffer(self, slot: int, like: torch.Tensor) -> torch.Tensor:
        """A pinned host view shaped like `like`, reusing slot `slot`'s storage if it fits."""
        nbytes = like.numel() * like.element_size()
        while len(self._buffers) <= slot:
            self._buffers.append(torch.empty(0, dtype=torch.uint8))
        if self._buffers[slot].numel() < nbytes:
            self._buffers[slot] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        raw = self._buffers[slot][:nbytes]
        return raw.view(like.dtype).view(like.shape)
