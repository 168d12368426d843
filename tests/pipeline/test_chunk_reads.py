"""A chunk reads only its tissue tiles' bounding box, and gets exactly the same tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.chunk_inference import cut_tiles
from pipeline.chunk_job import tiles_read_box
from pipeline.chunk_runner import _restore_torch_threads
from wsi.region_reader import read_model_box
from wsi.slide import open_slide
from wsi.tiling import TileGrid


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


def test_runner_gives_torch_threads_back():
    before = torch.get_num_threads()
    with _restore_torch_threads(True):
        torch.set_num_threads(1)
    assert torch.get_num_threads() == before


def test_fast_read_backend_reads_the_same_pixels():
    from pathlib import Path

    from pipeline.chunk_job import fast_read_backend

    svs = Path(__file__).resolve().parents[1] / "data" / "CMU-1-Small-Region.svs"
    slide = open_slide(svs, backend="openslide")
    assert fast_read_backend(slide) == "tiffslide"
    fast = open_slide(svs, backend="tiffslide")
    box = (100, 200, 612, 584)  # model space at 2 level-0 px per model px
    np.testing.assert_array_equal(read_model_box(fast, box, 2.0), read_model_box(slide, box, 2.0))
    assert fast_read_backend(fast) is None  # already tiffslide
