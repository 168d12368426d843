"""Tile geometry: the global tile grid and the chunks of one slide (docs/architecture.md).

Model space is the slide resampled to the model's mpp. Tile (i, j) of the global grid has
core `[j*S, (j+1)*S) x [i*S, (i+1)*S)` and reads `T` px centred on it, so cores partition
the plane whatever the chunk size. Chunks are `n x n` tiles; a chunk is kept only if one
of its tile cores touches tissue, and inside a kept chunk only tissue tiles are run:
every tissue pixel is computed exactly once and tissue-free regions cost nothing.
The zarr chunks are `STORE_TILES x STORE_TILES` tile cores whatever `n`, so the stored bytes do
not depend on it: `n` divides `STORE_TILES` or is a multiple of it, and the chunks of one
zarr chunk (its write unit) come one after another in the plan.
Pure geometry (numpy only), so it is testable without slides or models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wsi_segment.errors import ConfigError
from wsi_segment.wsi.region_reader import FINER_TOLERANCE, choose_level

# Tile cores per zarr chunk side: fixed, so the store's chunks (and bytes) do not depend on
# the chunk size; 8 x 8 cores of 224 px tiles at d = 4 is 384 x 384 output px a chunk.
STORE_TILES = 8


def check_chunk_tiles(chunk_tiles: int) -> None:
    """A chunk must fit whole zarr chunks, or whole chunks must fit in one zarr chunk."""
    if chunk_tiles < 1 or (STORE_TILES % chunk_tiles and chunk_tiles % STORE_TILES):
        raise ConfigError(
            f"chunk tiles must divide {STORE_TILES} or be a multiple of it (got {chunk_tiles}); "
            f"pass --chunk-tiles 1, 2, 4, {STORE_TILES}, {2 * STORE_TILES}, ..."
        )


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid in model space."""

    tile: int  # T
    overlap: int  # O (even)
    downsample: int  # d: output pixels are d x d model pixels

    @property
    def margin(self) -> int:
        return self.overlap // 2

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def validate(self) -> None:
        if self.stride <= 0:
            raise ConfigError(f"overlap {self.overlap} must be smaller than the tile {self.tile}")
        if self.stride % self.downsample:
            raise ConfigError(
                f"tile {self.tile} - overlap {self.overlap} = {self.stride} must be a multiple "
                f"of the output downsample {self.downsample}; change --overlap or "
                "--output-downsample"
            )


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk: its core in model space, the tissue tiles to run, its output box."""

    row: int
    col: int
    core_box: tuple[int, int, int, int]  # model space (x0, y0, x1, y1), multiple of the stride
    tiles: tuple[tuple[int, int], ...]  # (i, j) grid indices of tiles touching tissue
    out_box: tuple[int, int, int, int]  # output pixels, clipped to the output array
    # The write unit: the zarr chunk this chunk is written with, when the chunk is smaller
    # than one (core in model space, output box clipped); None: the chunk itself. The chunks
    # of one unit are stitched and written together once all have run (`UnitWriter`), so
    # no two writers ever touch one zarr chunk.
    unit_core: tuple[int, int, int, int] | None = None
    unit_out: tuple[int, int, int, int] | None = None

    def write_unit(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """(core box, output box) of the block written with this chunk."""
        return self.unit_core or self.core_box, self.unit_out or self.out_box


class TissueLike(Protocol):
    mask: np.ndarray
    downsample: float


class SlideLike(Protocol):
    """What planning reads of a slide (a `Slide`, or plain data in tests)."""

    @property
    def dimensions(self) -> tuple[int, int]: ...

    @property
    def level_downsamples(self) -> tuple[float, ...]: ...


@dataclass(frozen=True)
class ChunkPlan:
    level0_per_model: float
    read_level: int
    model_shape: tuple[int, int]  # (H, W) model pixels covering the slide
    output_shape: tuple[int, int]  # (H, W) output pixels = ceil(model_shape / d)
    chunk_out: int  # output pixels per zarr chunk side (`STORE_TILES` tile cores)
    grid_shape: tuple[int, int]  # tiles (rows, cols)
    specs: list[ChunkSpec]

    @property
    def tiles(self) -> int:
        return sum(len(s.tiles) for s in self.specs)


def tile_tissue_grid(
    tissue: TissueLike | None, grid_shape: tuple[int, int], stride_level0: float
) -> np.ndarray:
    """bool (rows, cols): does tile (i, j)'s core touch tissue? All True without a mask."""
    rows, cols = grid_shape
    if tissue is None:
        return np.ones(grid_shape, dtype=bool)
    mask = np.asarray(tissue.mask, dtype=bool)
    step = stride_level0 / float(tissue.downsample)  # mask pixels per tile core
    out = np.zeros(grid_shape, dtype=bool)
    if not mask.any():
        return out
    # A mask pixel [x, x+1) touches tile cores floor(x/step) .. floor((x+1)/step - tiny):
    # its rows, then its columns, grouped by the tile they touch (whole-array reductions,
    # not a coordinate per tissue pixel)
    for dy in (0.0, 1.0 - 1e-9):
        by_row = _any_by_tile(mask, _tile_of(mask.shape[0], dy, step), rows, axis=0)
        for dx in (0.0, 1.0 - 1e-9):
            out |= _any_by_tile(by_row, _tile_of(mask.shape[1], dx, step), cols, axis=1)
    return out


def _tile_of(pixels: int, offset: float, step: float) -> np.ndarray:
    """The tile index of each of `pixels` mask pixels' points at `offset` within it."""
    index: np.ndarray = np.floor((np.arange(pixels) + offset) / step).astype(np.int64)
    return index


def _any_by_tile(a: np.ndarray, tile: np.ndarray, tiles: int, axis: int) -> np.ndarray:
    """`a` reduced along `axis` to `tiles` entries: entry t is whether any slice whose
    `tile` (non-decreasing) is t is True; slices past the last tile are dropped."""
    kept = int(np.searchsorted(tile, tiles))  # tile is sorted: its first `kept` are < tiles
    shape = list(a.shape)
    shape[axis] = tiles
    out = np.zeros(shape, dtype=bool)
    if kept == 0:
        return out
    tile = tile[:kept]
    starts = np.flatnonzero(np.diff(tile, prepend=-1))
    index: list[slice | np.ndarray] = [slice(None)] * a.ndim
    index[axis] = slice(0, kept)  # a view of the kept slices, not a copy
    any_ = np.logical_or.reduceat(a[tuple(index)], starts, axis=axis)
    index[axis] = tile[starts]
    out[tuple(index)] = any_
    return out


def plan_chunks(
    slide: SlideLike,
    slide_mpp: float,
    model_mpp: float,
    grid: TileGrid,
    chunk_tiles: int,
    tissue: TissueLike | None,
    read_tolerance: float = FINER_TOLERANCE,
) -> ChunkPlan:
    """Chunks (with their tissue tiles) covering the slide at the model's resolution, read
    from the level `read_tolerance` allows (`region_reader.choose_level`)."""
    if slide_mpp <= 0 or model_mpp <= 0:
        raise ConfigError(f"mpp must be positive (slide {slide_mpp}, model {model_mpp})")
    grid.validate()
    level0_per_model = model_mpp / slide_mpp
    width0, height0 = slide.dimensions
    w_m = max(1, math.ceil(width0 / level0_per_model))
    h_m = max(1, math.ceil(height0 / level0_per_model))
    s, d = grid.stride, grid.downsample
    rows, cols = math.ceil(h_m / s), math.ceil(w_m / s)
    out_h, out_w = math.ceil(h_m / d), math.ceil(w_m / d)
    has_tissue = tile_tissue_grid(tissue, (rows, cols), s * level0_per_model)
    n = chunk_tiles
    check_chunk_tiles(n)
    u = max(n, STORE_TILES)  # tiles per write unit side: a whole number of chunks and zarr chunks
    specs: list[ChunkSpec] = []
    for ur in range(math.ceil(rows / u)):
        for uc in range(math.ceil(cols / u)):
            unit_core = (uc * u * s, ur * u * s, (uc + 1) * u * s, (ur + 1) * u * s)
            unit_out = _out_box(unit_core, d, (out_h, out_w))
            per_unit = u // n
            for cr in range(ur * per_unit, (ur + 1) * per_unit):
                for cc in range(uc * per_unit, (uc + 1) * per_unit):
                    block = has_tissue[cr * n : (cr + 1) * n, cc * n : (cc + 1) * n]
                    if not block.any():
                        continue
                    nz = zip(*np.nonzero(block), strict=True)
                    core = (cc * n * s, cr * n * s, (cc + 1) * n * s, (cr + 1) * n * s)
                    specs.append(
                        ChunkSpec(
                            row=cr,
                            col=cc,
                            core_box=core,
                            tiles=tuple((cr * n + int(i), cc * n + int(j)) for i, j in nz),
                            out_box=_out_box(core, d, (out_h, out_w)),
                            unit_core=None if n == u else unit_core,
                            unit_out=None if n == u else unit_out,
                        )
                    )
    return ChunkPlan(
        level0_per_model=level0_per_model,
        read_level=choose_level(tuple(slide.level_downsamples), level0_per_model, read_tolerance),
        model_shape=(h_m, w_m),
        output_shape=(out_h, out_w),
        chunk_out=STORE_TILES * s // d,
        grid_shape=(rows, cols),
        specs=specs,
    )


def contiguous_runs(specs: Sequence[ChunkSpec], parts: int) -> list[range]:
    """Contiguous ranges of `specs` covering all of them in order, balanced by tile count,
    each holding at least one chunk with tiles (at most `parts`; one if none has tiles): the
    one splitter of a plan, for a cluster's bands and for the decoders' shares.

    A chunk without tiles rides along with its neighbours: it still writes its (empty)
    zarr block, and only the run that owns it does. A run never opens inside a write unit
    (chunks of one zarr chunk, `ChunkSpec.write_unit`): one run writes it, whole."""
    with_tiles = [i for i, s in enumerate(specs) if s.tiles]
    n = max(1, min(parts, len(with_tiles)))
    if not specs:
        return []
    total = sum(len(specs[i].tiles) for i in with_tiles)
    starts, current, done = [0], 0, 0
    for i in with_tiles:
        part = min(n - 1, done * n // max(1, total))
        opens = i > starts[-1] and specs[i].write_unit() != specs[i - 1].write_unit()
        if part > current and opens:  # this chunk opens the next run
            starts.append(i)
            current = part
        done += len(specs[i].tiles)
    ends = [*starts[1:], len(specs)]
    return [range(a, b) for a, b in zip(starts, ends, strict=True)]


def _out_box(
    core: tuple[int, int, int, int], d: int, out_shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Output pixels of a model-space core box (multiples of d), clipped to the output array."""
    x0, y0, x1, y1 = core
    return (x0 // d, y0 // d, min(x1 // d, out_shape[1]), min(y1 // d, out_shape[0]))
