"""What goes into and comes out of the tile graph in every runtime: the `Geometry` it is
specialised for, the `ReducedOutputs` a batch leaves as, and the `Executor` that maps tiles to
them. Nothing here imports torch: a warm OpenVINO run never loads it (models/model_files.py),
which saves most of a small slide's start and much of its memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union

import numpy as np

if TYPE_CHECKING:
    import torch

# uint8 tiles (N, T, T, 3): numpy on the host, or a torch tensor on the model's device
Tiles = Union[np.ndarray, "torch.Tensor"]


@dataclass(frozen=True)
class Geometry:
    """What a tile graph is specialised for, besides the weights."""

    tile: int
    margin: int
    core: int
    downsample: int
    gate: bool

    @classmethod
    def whole(cls, tile: int, gate: bool = True) -> Geometry:
        """Whole tiles at full resolution: the labels `evaluate` and the calibration score."""
        return cls(tile, 0, tile, 1, gate)

    def key(self) -> str:
        gate = "gate" if self.gate else "nogate"
        return f"t{self.tile}-m{self.margin}-c{self.core}-d{self.downsample}-{gate}"


@dataclass(frozen=True)
class ReducedOutputs:
    """Host arrays of one batch: uint8 `probs` (N, K, h, w), uint8 `labels` (N, h, w),
    float32 `cls_probs` (N, K); h = w = core / downsample."""

    probs: np.ndarray
    labels: np.ndarray
    cls_probs: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes that crossed from the model's device (what a CUDA run copies back)."""
        return int(self.probs.nbytes + self.labels.nbytes + self.cls_probs.nbytes)


class Executor(Protocol):
    """Runs a tile graph: what the engine's compute threads hold."""

    def run(self, tiles: Tiles) -> ReducedOutputs: ...


def graph_labels(executor: Executor, tiles: np.ndarray) -> np.ndarray:
    """The slide path's labels of uint8 tiles (N, 3, T, T) at the executor's geometry (the
    tiles' cores, downsampled): what the checks compare."""
    return executor.run(np.transpose(tiles, (0, 2, 3, 1))).labels
