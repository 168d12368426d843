"""One Dask chunk: cut tiles from a model-space image, run the model, stitch the cores.

Stitching is centre-crop on a *global* tile grid (docs/CONTRACTS.md): tile (i, j) reads
`[j*S - m, j*S - m + T)` and contributes only its core `[j*S, (j+1)*S)`. Cores partition
the plane, so the result is the same whatever the chunk size and every output pixel comes
from exactly one tile, the one in whose centre it lies.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

import numpy as np

from wsi_segment.wsi.tiling import TileGrid

if TYPE_CHECKING:  # torch is imported where tiles are predicted: the CLI loads it in parallel
    import torch


class TileModel(Protocol):
    """What inference needs of a model (models.bundle.SegmentationModel satisfies it)."""

    def predict(
        self, tiles: torch.Tensor, gate: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def cut_tiles(
    image: np.ndarray, read_origin: tuple[int, int], tiles_ij: list[tuple[int, int]], grid: TileGrid
) -> np.ndarray:
    """Tiles (N, T, T, 3) uint8 from a chunk image whose top-left is model pixel `read_origin`."""
    ox, oy = read_origin
    t, s, m = grid.tile, grid.stride, grid.margin
    out = np.empty((len(tiles_ij), t, t, 3), dtype=np.uint8)
    for n, (i, j) in enumerate(tiles_ij):
        x, y = j * s - m - ox, i * s - m - oy
        out[n] = image[y : y + t, x : x + t]
    return out


def predict_tiles(
    model: TileModel,
    tiles: np.ndarray,
    batch_size: int,
    gate: bool,
    lock: threading.Lock | None = None,
) -> np.ndarray:
    """Gated class probabilities (N, K, T, T) float32 for uint8 tiles (N, T, T, 3).

    The lock serialises forward passes in a process so one model uses all compute threads
    while the other Dask threads read and decode the next chunks.
    """
    import torch

    results = []
    device = getattr(model, "device", None)
    pin = torch.cuda.is_available() and device is not None and torch.device(device).type == "cuda"
    for start in range(0, len(tiles), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(tiles[start : start + batch_size]))
        batch = batch.permute(0, 3, 1, 2)
        if pin:
            batch = batch.contiguous().pin_memory()
        if lock is None:
            seg, _ = model.predict(batch, gate=gate)
        else:
            with lock:
                seg, _ = model.predict(batch, gate=gate)
        results.append(seg.float().numpy())
    return np.concatenate(results) if results else np.zeros((0, 0, 0, 0), np.float32)


def stitch_cores(
    probs: np.ndarray,
    tiles_ij: list[tuple[int, int]],
    core_origin: tuple[int, int],
    core_size: tuple[int, int],
    n_classes: int,
    grid: TileGrid,
) -> np.ndarray:
    """Place each tile's core, averaged over d x d blocks, into the chunk's output block.

    Returns float32 (K, core_h / d, core_w / d); tiles not listed stay zero (no tissue).
    """
    d, s, m = grid.downsample, grid.stride, grid.margin
    cx, cy = core_origin
    out = np.zeros((n_classes, core_size[1] // d, core_size[0] // d), dtype=np.float32)
    so = s // d
    for n, (i, j) in enumerate(tiles_ij):
        core = probs[n, :, m : m + s, m : m + s]
        if d > 1:
            core = core.reshape(n_classes, so, d, so, d).mean(axis=(2, 4))
        oy, ox = (i * s - cy) // d, (j * s - cx) // d
        out[:, oy : oy + so, ox : ox + so] = core
    return out


def quantise(probs: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 0..255 (what the zarr stores)."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def label_block(probs_u8: np.ndarray, tissue: np.ndarray, nodata: int = 255) -> np.ndarray:
    """Argmax of the stored uint8 probabilities inside tissue; `nodata` elsewhere.

    Computed from the stored values so that the zarr's argmax and the polygons agree exactly.
    """
    labels = np.argmax(probs_u8, axis=0).astype(np.uint8)
    valid = tissue & (probs_u8.max(axis=0) > 0)
    labels[~valid] = nodata
    return labels
