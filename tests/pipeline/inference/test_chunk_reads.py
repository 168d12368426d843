"""A chunk reads only its tissue tiles' bounding box, and gets exactly the same tiles."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_segment.pipeline.inference.chunk_reader import cut_tiles, tiles_read_box
from wsi_segment.wsi.region_reader import read_model_box
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import TileGrid


@pytest.mark.parametrize("level0_per_model", [1.0, 1.37, 2.0])
def test_bounding_box_read_gives_the_same_tiles(cmu_region_slide, level0_per_model):
    slide = open_slide(cmu_region_slide, mpp=0.499)
    grid = TileGrid(tile=32, overlap=8, downsample=4)
    s, m, n = grid.stride, grid.margin, 4
    tiles = [(1, 2), (2, 1), (2, 2), (3, 3)]  # an irregular tissue patch inside chunk (0, 0)
    full_box = (-m, -m, n * s + m, n * s + m)
    full = read_model_box(slide, full_box, level0_per_model)
    expected = cut_tiles(full, full_box[:2], tiles, grid)
    box = tiles_read_box(tuple(tiles), grid)
    assert box == (1 * s - m, 1 * s - m, 4 * s + m, 4 * s + m)
    part = read_model_box(slide, box, level0_per_model)
    assert part.shape[0] * part.shape[1] < full.shape[0] * full.shape[1]
    np.testing.assert_array_equal(cut_tiles(part, box[:2], tiles, grid), expected)


def test_no_tiles_means_no_box():
    assert tiles_read_box((), TileGrid(64, 16, 4)) is None


@pytest.mark.parametrize("model_mpp", [0.499, 1.0])  # exact level pixels; resampled 2.004x
def test_chunk_reads_share_storage_tiles_with_the_same_pixels(model_mpp):
    """Every chunk of a real plan reads the same image with storage-tile reuse as without,
    through the prefetcher and through a runner thread that claimed its chunk first."""
    from tests.conftest import CMU_SLIDE
    from wsi_segment.pipeline.inference.chunk_job import SlideJob
    from wsi_segment.pipeline.inference.chunk_prefetch import ChunkPrefetcher
    from wsi_segment.pipeline.inference.chunk_reader import ChunkReader
    from wsi_segment.wsi.tiling import plan_chunks

    slide = open_slide(CMU_SLIDE, backend="tiffslide")
    grid = TileGrid(tile=224, overlap=32, downsample=4)
    plan = plan_chunks(slide, 0.499, model_mpp, grid, 2, None)
    job = SlideJob(
        reader=ChunkReader(
            slide_path=str(CMU_SLIDE),
            backend="tiffslide",
            mpp_override=None,
            level0_per_model=plan.level0_per_model,
            read_level=plan.read_level,
            grid=grid,
        ),
        n_classes=4,
        batch_size=8,
        gate=True,
        zarr_path="",
        tissue_mask=np.ones((1, 1), bool),
        tissue_downsample=1e9,
        level0_per_output=plan.level0_per_model * grid.downsample,
        model=None,
    )
    specs = list(plan.specs)
    assert len(specs) >= 4
    reuse = job.plan_tile_reuse(specs)
    assert reuse is not None
    for spec in specs:
        image, box = job.read(spec, reuse)
        direct, direct_box = job.read(spec)
        assert box == direct_box
        np.testing.assert_array_equal(image, direct)
    assert reuse.tiles_reused > 0 and reuse.cached_bytes == 0

    prefetch = ChunkPrefetcher(job.reader, specs)
    claimed = prefetch.take(specs[-1])  # a runner gets there before the reader
    try:
        for spec in specs:
            got = claimed if spec is specs[-1] else prefetch.take(spec)
            image, _ = got if got is not None else prefetch.read_here(spec)
            np.testing.assert_array_equal(image, job.read(spec)[0])
    finally:
        prefetch.close()
    assert prefetch.tile_reuse is not None and prefetch.tile_reuse.tiles_reused > 0
