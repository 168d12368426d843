"""The CPU reference of the slide path's reduction, as the pipeline did it before the model
reduced on its device: full float32 maps from `predict`, then numpy core crop, d x d mean,
uint8 quantisation and labels taken from the quantised values (gated pixels whose kept
classes all round to 0 become nodata). Tests compare the on-device reduction against it.

Also the engine's reference: a chunk's reduced cores computed alone (`chunk_alone`), read by
the job's `TileReader` and batched chunk by chunk with no engine, no read source, no padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.slide_job import ReducedTiles
    from wsi_segment.wsi.tiling import ChunkSpec, TileGrid


def quantise(probs: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 0..255."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def pooled_cores(seg_probs: np.ndarray, margin: int, core: int, d: int) -> np.ndarray:
    """float32 (N, K, core/d, core/d): each tile's core averaged over d x d blocks."""
    n, k = seg_probs.shape[:2]
    c = seg_probs[:, :, margin : margin + core, margin : margin + core]
    return c.reshape(n, k, core // d, d, core // d, d).mean(axis=(3, 5))


def label_quantised(probs_u8: np.ndarray, nodata: int = 255) -> np.ndarray:
    """Argmax over axis -3 of uint8 probabilities; nodata where all are 0."""
    labels = np.argmax(probs_u8, axis=-3).astype(np.uint8)
    labels[probs_u8.max(axis=-3) == 0] = nodata
    return labels


def near_rounding_boundary(probs: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """True where x * 255 sits within `tol` of a half level: float sums in another order
    (numpy vs torch, another CPU's vector width) may round these one level apart."""
    frac = np.asarray(probs, np.float64) * 255.0 % 1.0
    return np.abs(frac - 0.5) < tol


def unique_positive_max(probs_u8: np.ndarray) -> np.ndarray:
    """True where one class alone holds the largest uint8 value over axis -3, and it is > 0:
    there labels before and after quantisation must agree."""
    top = probs_u8.max(axis=-3, keepdims=True)
    return ((probs_u8 == top).sum(axis=-3) == 1) & (top[..., 0, :, :] > 0)


def label_count_bounds(
    probs_u8: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per class (axis 0 of (K, H, W)), the fewest and most pixels with a positive stored
    maximum that labels taken before quantisation can give it: exactly the argmax's where
    one class holds a clear maximum; at ties, any of the tied classes. (Pixels whose stored
    values are all 0 are nodata, or labelled where the gate removed the sure class.)
    `weights` (H, W): what each pixel counts for (its part on the slide), else 1."""
    k = probs_u8.shape[0]
    w = np.ones(probs_u8.shape[1:]) if weights is None else weights
    top = probs_u8.max(axis=0, keepdims=True)
    clear = unique_positive_max(probs_u8)
    tied = ~clear & (top[0] > 0)
    argmax = probs_u8.argmax(axis=0)
    low = np.array([w[(argmax == c) & clear].sum() for c in range(k)])
    high = low + np.array([w[(probs_u8[c] == top[0]) & tied].sum() for c in range(k)])
    if weights is None:
        return low.astype(np.int64), high.astype(np.int64)
    return low, high


def reference_block(job, spec, model, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk's output block as the pipeline made it before: (float32 probabilities,
    uint8 probabilities, labels from the uint8 values), 0 / 255 outside tissue. `job` is a
    pipeline.inference.slide_job.SlideJob; `model` predicts full maps in batches of `batch`."""
    import torch

    d, s, m = job.grid.downsample, job.grid.stride, job.grid.margin
    tiles = list(spec.tiles)
    patches = torch.from_numpy(job.reader.read_tiles(spec)).permute(0, 3, 1, 2)
    seg = np.concatenate(
        [
            model.predict(patches[i : i + batch], gate=job.gate)[0].numpy()
            for i in range(0, len(patches), batch)
        ]
    )
    pooled = pooled_cores(seg, m, s, d)
    x0, y0, x1, y1 = spec.core_box
    block = np.zeros((seg.shape[1], (y1 - y0) // d, (x1 - x0) // d), np.float32)
    for n, (i, j) in enumerate(tiles):
        oy, ox = (i * s - y0) // d, (j * s - x0) // d
        block[:, oy : oy + s // d, ox : ox + s // d] = pooled[n]
    ox0, oy0, ox1, oy1 = spec.out_box
    block = block[:, : oy1 - oy0, : ox1 - ox0]
    tissue = job.tissue_block(spec.out_box)
    block[:, ~tissue] = 0
    u8 = quantise(block)
    return block, u8, label_quantised(u8)


def predict_unpadded(
    executor: Any, tiles: np.ndarray, grid: TileGrid, batch_size: int, lock: Any = None
) -> ReducedTiles:
    """uint8 tiles (N, T, T, 3) through an executor of the tile graph in batches of
    `batch_size`, the last one short (the engine zero-fills it: `compute_stage.Stager`)."""
    import contextlib

    from wsi_segment.pipeline.inference.slide_job import ReducedTiles

    parts = []
    for i in range(0, len(tiles), batch_size):
        with lock if lock is not None else contextlib.nullcontext():
            out = executor.run(np.ascontiguousarray(tiles[i : i + batch_size]))
        parts.append(ReducedTiles(out.probs, out.labels, out.nbytes))
    if not parts:
        so = grid.stride // grid.downsample
        return ReducedTiles(np.zeros((0, 0, so, so), np.uint8), np.zeros((0, so, so), np.uint8), 0)
    return ReducedTiles(
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.labels for p in parts]),
        sum(p.bytes_from_model for p in parts),
    )


def chunk_alone(job: Any, spec: ChunkSpec, batch: int) -> ReducedTiles:
    """The reduced cores of one chunk's tiles, in `spec.tiles` order, computed alone: read by
    the job's `TileReader`, in batches of `batch` tiles (as a device's memory allows) holding
    this chunk only. `job` is a pipeline.inference.slide_job.SlideJob; `job.finish_block`
    writes what this gives."""
    loaded = job.model.get()
    batch_size = loaded.batch_size(job.grid.tile, batch)
    executor = loaded.executor(job.geometry, batch_size, None)
    tiles = job.reader.read_tiles(spec)
    return predict_unpadded(executor, tiles, job.grid, batch_size, loaded.lock)


def units_alone(job: Any, specs: list[ChunkSpec], batch: int) -> list[Any]:
    """Every chunk computed alone (`chunk_alone`, batches of `batch`), then written and
    summarised per write unit (the chunks of one zarr chunk together, `ChunkSpec.write_unit`)
    as the engine's writer does; the outcomes (`ChunkOutcome`) in plan order."""
    from wsi_segment.pipeline.inference.slide_job import ReducedTiles
    from wsi_segment.pipeline.inference.unit_writer import write_units

    outcomes = []
    for unit in write_units(specs):
        parts = [chunk_alone(job, specs[i], batch) for i in unit.starts]
        reduced = ReducedTiles(
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.labels for p in parts]),
            sum(p.bytes_from_model for p in parts),
        )
        outcomes.append(job.finish_block(unit.spec, reduced, polygons=None))  # in this thread
    return outcomes
