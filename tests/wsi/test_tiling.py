"""Tile planning: cores cover every tissue pixel exactly once; the read level is right."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from wsi_segment.errors import ConfigError
from wsi_segment.wsi.region_reader import (
    FINER_TOLERANCE,
    READ_LEVEL_TOLERANCES,
    SERVING_TOLERANCE,
    choose_level,
)
from wsi_segment.wsi.tiling import (
    STORE_TILES,
    ChunkSpec,
    TileGrid,
    check_chunk_tiles,
    contiguous_runs,
    plan_chunks,
    tile_tissue_grid,
)


@dataclass
class Dims:
    dimensions: tuple[int, int]
    level_downsamples: tuple[float, ...] = (1.0, 4.0, 16.0)


@dataclass
class Mask:
    mask: np.ndarray
    downsample: float


def _blob_mask(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A few random discs: tissue with holes and islands, touching the borders sometimes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(5):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(2, max(shape) / 4)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return mask


def _coverage(plan, grid: TileGrid) -> np.ndarray:
    """How many planned tile cores cover each model pixel (clipped to the model shape)."""
    h, w = plan.model_shape
    hits = np.zeros((h, w), np.int32)
    s = grid.stride
    for spec in plan.specs:
        x0, y0, x1, y1 = spec.core_box
        for i, j in spec.tiles:
            assert x0 <= j * s < x1 and y0 <= i * s < y1, "tile outside its chunk core"
            hits[i * s : (i + 1) * s, j * s : (j + 1) * s] += 1
    return hits


@pytest.mark.parametrize(
    ("dims", "slide_mpp", "model_mpp", "tile", "overlap", "d", "n", "mask_ds", "seed"),
    [
        ((1000, 777), 0.5, 1.0, 64, 16, 4, 16, 8.0, 0),
        ((2051, 1333), 0.25, 1.0, 96, 32, 4, 2, 16.0, 1),
        ((513, 1025), 0.499, 2.0, 64, 0, 1, 4, 7.3, 2),
        ((3000, 3000), 0.2271, 0.5, 224, 32, 8, 4, 23.7, 3),
    ],
)
def test_cores_cover_every_tissue_pixel_exactly_once(
    dims, slide_mpp, model_mpp, tile, overlap, d, n, mask_ds, seed
):
    grid = TileGrid(tile=tile, overlap=overlap, downsample=d)
    mask_shape = (math.ceil(dims[1] / mask_ds), math.ceil(dims[0] / mask_ds))
    tissue = Mask(_blob_mask(mask_shape, seed), mask_ds)
    plan = plan_chunks(Dims(dims), slide_mpp, model_mpp, grid, n, tissue)

    f = model_mpp / slide_mpp  # level-0 px per model px
    assert plan.model_shape == (math.ceil(dims[1] / f), math.ceil(dims[0] / f))
    assert plan.output_shape == tuple(math.ceil(v / d) for v in plan.model_shape)
    hits = _coverage(plan, grid)
    assert hits.max() <= 1, "a model pixel is computed twice"

    # Every model pixel whose level-0 footprint overlaps a tissue mask pixel is covered.
    h, w = plan.model_shape
    ys = (np.arange(h) * f / mask_ds).astype(int)
    ye = np.minimum(np.ceil((np.arange(h) + 1) * f / mask_ds).astype(int), mask_shape[0])
    xs = (np.arange(w) * f / mask_ds).astype(int)
    xe = np.minimum(np.ceil((np.arange(w) + 1) * f / mask_ds).astype(int), mask_shape[1])
    integral = np.pad(tissue.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    touches = (
        integral[ye][:, xe] - integral[ys][:, xe] - integral[ye][:, xs] + integral[ys][:, xs]
    ) > 0
    assert touches.any()
    assert np.all(hits[touches] == 1), "a tissue pixel is not covered"

    # Tissue-free chunks are not planned; output boxes tile the output array without overlap.
    out = np.zeros(plan.output_shape, np.int32)
    for spec in plan.specs:
        assert spec.tiles
        ox0, oy0, ox1, oy1 = spec.out_box
        out[oy0:oy1, ox0:ox1] += 1
    assert out.max() == 1


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_zarr_chunks_are_fixed_and_chunks_of_one_are_one_write_unit(n):
    """The zarr chunk is STORE_TILES tile cores whatever the chunk size; smaller chunks of one
    zarr chunk share its write unit and come one after another in the plan, so one writer
    (and one band) writes each zarr chunk whole; larger chunks hold whole zarr chunks."""
    grid = TileGrid(tile=64, overlap=16, downsample=4)  # 12 output px a tile core
    tissue = Mask(_blob_mask((100, 130), 5), 10.0)
    plan = plan_chunks(Dims((1300, 1000)), 0.5, 1.0, grid, n, tissue)
    assert STORE_TILES == 8 and plan.chunk_out == 8 * 12
    units = [s.write_unit() for s in plan.specs]
    assert len(set(units)) == len([u for i, u in enumerate(units) if i == 0 or units[i - 1] != u])
    for spec, (core, out) in zip(plan.specs, units, strict=True):
        x0, y0, x1, y1 = core
        assert (x1 - x0, y1 - y0) == (max(n, 8) * 48,) * 2  # 48 model px a tile core
        assert x0 <= spec.core_box[0] and spec.core_box[2] <= x1
        assert y0 <= spec.core_box[1] and spec.core_box[3] <= y1
        assert out[0] % plan.chunk_out == 0 and out[1] % plan.chunk_out == 0
        assert (spec.unit_core is None) == (n >= 8)
    ref = plan_chunks(Dims((1300, 1000)), 0.5, 1.0, grid, 8, tissue)
    assert sorted(t for s in plan.specs for t in s.tiles) == sorted(
        t for s in ref.specs for t in s.tiles
    )


@pytest.mark.parametrize("n", [0, 3, 5, 12, 65])
def test_chunks_that_would_cut_zarr_chunks_are_refused(n):
    with pytest.raises(ConfigError, match="chunk tiles must divide 8 or be a multiple of it"):
        check_chunk_tiles(n)


def test_no_tissue_plans_nothing_and_no_mask_plans_everything():
    grid = TileGrid(tile=64, overlap=16, downsample=4)
    empty = Mask(np.zeros((50, 60), bool), 10.0)
    assert plan_chunks(Dims((600, 500)), 0.5, 1.0, grid, 4, empty).specs == []
    plan = plan_chunks(Dims((600, 500)), 0.5, 1.0, grid, 4, None)
    rows, cols = plan.grid_shape
    assert plan.tiles == rows * cols == math.ceil(250 / 48) * math.ceil(300 / 48)
    assert _coverage(plan, grid)[: plan.model_shape[0], : plan.model_shape[1]].min() == 1


def test_tile_tissue_grid_marks_tiles_touching_a_single_mask_pixel():
    mask = np.zeros((10, 10), bool)
    mask[2, 7] = True  # level-0 box x [70, 80), y [20, 30) with downsample 10
    got = tile_tissue_grid(Mask(mask, 10.0), (5, 5), stride_level0=25.0)
    expected = np.zeros((5, 5), bool)
    expected[0:2, 2:4] = True  # x spans cores 2 (50-75) and 3 (75-100), y cores 0 and 1
    np.testing.assert_array_equal(got, expected)


def _tiles_touched(mask: np.ndarray, step: float, grid_shape: tuple[int, int]) -> np.ndarray:
    """The reference, pixel by pixel: a mask pixel [x, x + 1) touches the tile cores from
    floor(x / step) to floor((x + 1) / step - tiny), in each axis; those past the grid drop."""
    out = np.zeros(grid_shape, bool)
    tiny = 1e-9
    for y, x in zip(*np.nonzero(mask), strict=True):
        for i in {math.floor(y / step), math.floor((y + (1 - tiny)) / step)}:
            for j in {math.floor(x / step), math.floor((x + (1 - tiny)) / step)}:
                if i < grid_shape[0] and j < grid_shape[1]:
                    out[i, j] = True
    return out


@pytest.mark.parametrize("seed", range(6))
def test_tile_tissue_grid_is_the_pixel_by_pixel_rule(seed: int) -> None:
    """Whole masks, sparse and dense, tiles of 1.5 to 40 mask pixels, grids shorter and
    longer than the mask: every tile touched by a mask pixel, and no other."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(5, 90, 2))
    mask = rng.random((h, w)) < (0.002, 0.05, 0.6)[seed % 3]
    step = (1.5, 3.0, 7.3, 40.0, 2.25, 11.0)[seed]
    grid_shape = (math.ceil(h / step) + seed % 2 - 1 or 1, math.ceil(w / step) + 1)
    got = tile_tissue_grid(Mask(mask, 4.0), grid_shape, stride_level0=step * 4.0)
    np.testing.assert_array_equal(got, _tiles_touched(mask, step, grid_shape))
    assert got.any() == mask.any()


@pytest.mark.parametrize(
    ("downsamples", "slide_mpp", "model_mpp", "level"),
    [
        ((1.0, 4.0, 16.0), 0.25, 0.25, 0),  # same resolution: level 0
        ((1.0, 4.0, 16.0), 0.25, 0.5, 0),  # x2: level 1 (x4) would upsample
        ((1.0, 4.0, 16.0), 0.25, 1.0, 1),  # x4 exactly
        ((1.0, 4.0, 16.0), 0.25, 3.9, 1),  # x15.6: level 2 (x16) too coarse
        ((1.0, 4.0, 16.0), 0.25, 4.0, 2),
        ((1.0, 4.000183, 16.0012), 0.2527, 1.0108, 1),  # rounding in metadata: 4.0 vs 4.000183
        ((1.0, 2.0, 4.0, 8.0), 0.5, 8.0, 3),  # x16: coarsest level 8
        ((1.0,), 0.499, 2.0, 0),  # single level
        ((1.0, 4.0), 1.0, 0.5, 0),  # model finer than the slide: upsample level 0
    ],
)
@pytest.mark.parametrize("read_level", ["serving", "finer"])
def test_choose_level(downsamples, slide_mpp, model_mpp, level, read_level):
    """Where a level holds the model's pixels or a finer one serves, both rules agree."""
    tolerance = READ_LEVEL_TOLERANCES[read_level]
    assert choose_level(downsamples, model_mpp / slide_mpp, tolerance) == level


APERIO = (1.0, 4.000183, 16.003, 32.01)  # a 40x SVS: its levels' downsamples as rounded sizes
NDPI = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # Hamamatsu: halving levels
MRXS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)  # 3DHistech


@pytest.mark.parametrize(
    ("downsamples", "slide_mpp", "model_mpp", "serving", "finer"),
    [
        (APERIO, 0.2520, 1.0, 1, 0),  # 3.968: the 4x level is 0.8 % coarser
        (APERIO, 0.2527, 1.0, 1, 0),  # 3.957: 1.1 % coarser
        (APERIO, 0.2500, 1.0, 1, 1),  # 4.0 (its metadata's 4.000183 within rounding)
        (APERIO, 0.2520, 0.5, 0, 0),  # 1.98: no 2x level; level 0 reduced
        (APERIO, 0.2520, 4.0, 2, 1),  # 15.87: the 16x level is 0.8 % coarser
        (APERIO, 0.2400, 1.0, 1, 1),  # 4.17: the 4x level is finer, read by both
        (NDPI, 0.2265, 1.0, 2, 2),  # 4.42: the 4x level is finer than the model's pixels
        (NDPI, 0.2265, 0.5, 1, 1),  # 2.21: the 2x level
        (NDPI, 0.2520, 0.5, 1, 0),  # 1.98: the 2x level is 0.8 % coarser
        (MRXS, 0.2430, 1.0, 2, 2),  # 4.12
        (MRXS, 0.2500, 1.0, 2, 2),  # exactly 4
        (MRXS, 0.2475, 0.5, 1, 1),  # 2.02
    ],
)
def test_the_level_that_serves_on_scanners_pyramids(
    downsamples, slide_mpp, model_mpp, serving, finer
):
    """The scanners' real 40x mpp: an Aperio scan at 0.252 um/px reads its 4x level for a
    1 um/px model (`serving`), where `finer` decodes level 0 (16x the pixels)."""
    ratio = model_mpp / slide_mpp
    assert choose_level(downsamples, ratio, SERVING_TOLERANCE) == serving
    assert choose_level(downsamples, ratio, FINER_TOLERANCE) == finer


@pytest.mark.parametrize(
    ("coarser_by", "level"),
    [(0.0, 1), (0.0199, 1), (0.0201, 0), (0.05, 0), (-0.01, 1), (-0.3, 1)],
)
def test_the_serving_tolerance_is_a_bound(coarser_by, level):
    """A level up to 2 % coarser than the model's pixels serves, one more than 2 % coarser
    does not; a finer one always does (the resample reduces it)."""
    downsamples = (1.0, 4.0 * (1 + coarser_by))
    assert choose_level(downsamples, 4.0, SERVING_TOLERANCE) == level


def test_plan_reads_from_the_chosen_level_and_rejects_bad_geometry():
    grid = TileGrid(tile=64, overlap=16, downsample=4)
    plan = plan_chunks(Dims((4000, 4000)), 0.25, 1.0, grid, 4, None)
    assert plan.read_level == 1 and plan.level0_per_model == 4.0
    with pytest.raises(ConfigError, match="multiple of the output downsample"):
        plan_chunks(Dims((100, 100)), 0.5, 1.0, TileGrid(64, 18, 4), 4, None)
    with pytest.raises(ConfigError, match="smaller than the tile"):
        plan_chunks(Dims((100, 100)), 0.5, 1.0, TileGrid(64, 64, 4), 4, None)
    with pytest.raises(ConfigError, match="mpp must be positive"):
        plan_chunks(Dims((100, 100)), 0.0, 1.0, grid, 4, None)


def _spec(row: int, tiles: int, unit: int | None = None) -> ChunkSpec:
    """Chunk `row` of a column; `unit`: the row of the write unit (zarr chunk) it shares."""
    box = (0, row, 1, row + 1)
    shared = None if unit is None else (0, unit, 1, unit + 1)
    return ChunkSpec(row, 0, box, tuple((i, 0) for i in range(tiles)), box, shared, shared)


def test_bands_are_contiguous_runs_of_the_plan_balanced_by_tiles() -> None:
    tiles = [0, 4, 4, 0, 4, 4, 0, 4, 4, 0]
    specs = [_spec(r, n) for r, n in enumerate(tiles)]
    bands = contiguous_runs(specs, 3)
    assert bands == [range(0, 4), range(4, 7), range(7, 10)]
    assert [sum(tiles[i] for i in b) for b in bands] == [8, 8, 8]
    # never more bands than chunks with tiles, each holding one; every chunk, in order
    assert contiguous_runs(specs, 50) == [
        range(0, 2), range(2, 4), range(4, 5), range(5, 7), range(7, 8), range(8, 10)
    ]  # fmt: skip
    # a chunk holding most tiles takes its band alone; the few after it share the last
    heavy = [_spec(r, n) for r, n in enumerate([1, 90, 1, 1, 1])]
    assert contiguous_runs(heavy, 3) == [range(0, 2), range(2, 5)]
    assert contiguous_runs([_spec(0, 0), _spec(1, 0)], 4) == [range(0, 2)]  # no tissue: one band
    assert contiguous_runs([], 4) == []


def test_a_band_never_splits_the_chunks_of_one_zarr_chunk() -> None:
    """Chunks smaller than a zarr chunk share it (a write unit): one band writes it whole, or
    two writers would each write part of one zarr chunk and lose the other's."""
    specs = [_spec(r, 4, unit=r // 4 * 4) for r in range(8)]  # two units of four chunks
    assert contiguous_runs(specs, 8) == [range(0, 4), range(4, 8)]
    assert contiguous_runs(specs, 3) == [range(0, 4), range(4, 8)]
    mixed = [_spec(0, 4), *[_spec(r, 1, unit=1) for r in range(1, 5)], _spec(5, 4)]
    assert contiguous_runs(mixed, 3) == [range(0, 1), range(1, 5), range(5, 6)]


def test_decoders_share_the_plan_by_the_same_splitter_tissue_chunks_only() -> None:
    from wsi_segment.pipeline.inference.decode_pool import decoder_shares

    specs = [_spec(r, n) for r, n in enumerate([0, 4, 4, 0, 4, 4, 0, 4, 4, 0])]
    assert decoder_shares(specs, 3) == [[1, 2], [4, 5], [7, 8]]
    assert decoder_shares(specs, 1) == [[1, 2, 4, 5, 7, 8]]
    assert decoder_shares([_spec(0, 0)], 2) == []
