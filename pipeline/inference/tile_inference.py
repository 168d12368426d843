"""A chunk's tiles through the model and back: batches on the device, cores stitched in place.

The executor returns each tile's core already in the stored form (uint8 probabilities and
labels of output pixels, reduced on the model's device: models/runtimes/graph.py); this
module only places them.

Stitching is centre-crop on a *global* tile grid (docs/architecture.md): tile (i, j) reads
`[j*S - m, j*S - m + T)` and contributes only its core `[j*S, (j+1)*S)`. Cores partition
the plane, so the result is the same whatever the chunk size and every output pixel comes
from exactly one tile, the one in whose centre it lies.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsi_segment.pipeline.outputs.chunk_summary import NODATA as NODATA  # re-exported
from wsi_segment.wsi.tiling import TileGrid

if TYPE_CHECKING:  # torch is imported where tiles are predicted: the CLI loads it in parallel
    import torch

    from wsi_segment.models.runtimes.executor import Executor


@dataclass
class ReducedTiles:
    """Outputs in their stored form: uint8 probabilities (..., K, h, w), uint8 labels
    (..., h, w), per tile (N leading, h = w = S/d) or stitched into a chunk's block, and the
    bytes that crossed from the model's device for them."""

    probs: np.ndarray
    labels: np.ndarray
    bytes_from_model: int


def predict_batch(
    executor: Executor, tiles: torch.Tensor, batch: int, lock: threading.Lock | None = None
) -> ReducedTiles:
    """The stored form of at most `batch` uint8 tiles (N, T, T, 3), computed in a forward pass
    of exactly `batch` tiles: a short batch (a run's last) is padded with zero tiles whose
    outputs are dropped. Every forward pass of the engine (`ComputeStage`) goes through here.

    Why: a tile's output must not depend on the batch it was computed in, or the same slide
    gives other bytes from run to run and from one read source to another. oneDNN and cuDNN
    pick kernels, blockings and (bf16/fp16) accumulation orders by the input's shape, so
    the same tile in a batch of 3 and of 16 may differ by an ulp, enough to move a uint8
    probability by 1/255 or a classifier probability across the gate's epsilon. At one
    shape the kernels are the same, and the models we ship (eval-mode conv nets, BatchNorm
    with running statistics, per-tile softmax and gate) compute each sample alone, so which
    other tiles share the batch does not matter (`tests/pipeline/inference/test_fixed_batch.py`
    checks every position of a batch). The bits also depend on the torch thread count (the
    engine keeps it fixed for a run). `bytes_from_model` counts the kept tiles only.
    """
    import torch

    n = len(tiles)
    if not 0 < n <= batch:
        raise ValueError(f"a batch holds 1 to {batch} tiles, got {n}")
    if n < batch:
        tiles = torch.cat([tiles, tiles.new_zeros((batch - n, *tiles.shape[1:]))])
    with lock if lock is not None else contextlib.nullcontext():
        out = executor.run(tiles)
    return ReducedTiles(out.probs[:n].numpy(), out.labels[:n].numpy(), out.nbytes // batch * n)


def stitch_cores(
    cores: np.ndarray,
    tiles_ij: list[tuple[int, int]],
    core_origin: tuple[int, int],
    core_size: tuple[int, int],
    grid: TileGrid,
    fill: int,
) -> np.ndarray:
    """Place each tile's reduced core (..., S/d, S/d) into the chunk's output block.

    Returns (..., core_h / d, core_w / d) of `cores`' dtype; tiles not listed (no tissue)
    stay `fill`.
    """
    d, s = grid.downsample, grid.stride
    cx, cy = core_origin
    lead = cores.shape[1:-2]
    out = np.full((*lead, core_size[1] // d, core_size[0] // d), fill, dtype=cores.dtype)
    so = s // d
    for n, (i, j) in enumerate(tiles_ij):
        oy, ox = (i * s - cy) // d, (j * s - cx) // d
        out[..., oy : oy + so, ox : ox + so] = cores[n]
    return out
