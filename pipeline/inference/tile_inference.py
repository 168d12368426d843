"""A chunk's tiles through the model and back: fixed-size forward passes, cores stitched.

Stitching is centre-crop on the global tile grid (docs/architecture.md): each output pixel
comes from exactly one tile's core, whatever the chunk size.
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
    of exactly `batch` tiles: a short batch is padded with zero tiles whose outputs are
    dropped. Every forward pass of the engine goes through here.

    A tile's output must not depend on its batch, or the same slide gives other bytes from
    run to run: oneDNN and cuDNN pick kernels and accumulation orders by the input's shape,
    so the same tile in batches of 3 and 16 may differ by an ulp. At one shape the kernels
    are the same, and the models we ship compute each sample alone
    (`tests/pipeline/inference/test_fixed_batch.py`)."""
    import torch

    n = len(tiles)
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
    """Each tile's reduced core (..., S/d, S/d) placed into the chunk's output block
    (..., core_h / d, core_w / d); tiles not listed (no tissue) stay `fill`."""
    d, s = grid.downsample, grid.stride
    cx, cy = core_origin
    lead = cores.shape[1:-2]
    out = np.full((*lead, core_size[1] // d, core_size[0] // d), fill, dtype=cores.dtype)
    so = s // d
    for n, (i, j) in enumerate(tiles_ij):
        oy, ox = (i * s - cy) // d, (j * s - cx) // d
        out[..., oy : oy + so, ox : ox + so] = cores[n]
    return out
