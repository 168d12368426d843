"""At a whole read scale a chunk's tiles are resampled from their union in one pass, and each
tile still gets exactly the bytes it gets when it is read on its own."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.pipeline.inference.tile_reader import tile_boxes
from wsi_segment.wsi.region_reader import read_model_tiles, union_is_cheaper, whole_scale
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import TileGrid

GRID = TileGrid(tile=64, overlap=16, downsample=4)


BLOCK = [(i, j) for i in range(1, 4) for j in range(2, 6)]  # 3 rows x 4 columns
COLUMN = [(i, 3) for i in range(1, 5)]  # a tall union: PIL alone would run columns first
ROW = [(2, j) for j in range(1, 5)]


@pytest.mark.parametrize("tiles", [BLOCK, COLUMN, ROW], ids=["block", "column", "row"])
@pytest.mark.parametrize("level0_per_model", [2.0, 3.0, 4.0])
def test_a_dense_chunk_at_a_whole_scale_gets_each_tiles_own_bytes(level0_per_model, tiles):
    """Overlapping tiles are resampled as one union (the cheaper way), and every tile equals
    the tile read alone (resampled from its own box), whatever the union's shape."""
    boxes = tile_boxes(tiles, GRID)
    assert whole_scale(level0_per_model) and union_is_cheaper(boxes)
    with open_slide(CMU_SLIDE, backend="tiffslide") as slide:
        together = read_model_tiles(slide, boxes, level0_per_model, 0)
        alone = np.stack([read_model_tiles(slide, [b], level0_per_model, 0)[0] for b in boxes])
    np.testing.assert_array_equal(together, alone)
    assert len(np.unique(together.reshape(-1, 3), axis=0)) > 100  # tissue, not blank


def test_scattered_tiles_are_resampled_each_from_its_own_box():
    """Two tiles far apart: their union is mostly slide that no tile uses, so each is
    resampled on its own, with the same bytes as alone."""
    boxes = tile_boxes([(0, 0), (4, 6)], GRID)
    assert not union_is_cheaper(boxes)
    with open_slide(CMU_SLIDE, backend="tiffslide") as slide:
        together = read_model_tiles(slide, boxes, 2.0, 0)
        alone = np.stack([read_model_tiles(slide, [b], 2.0, 0)[0] for b in boxes])
    np.testing.assert_array_equal(together, alone)


def test_only_whole_scales_share_one_resampling():
    assert whole_scale(2.0) and whole_scale(3.0)
    assert not whole_scale(2.004008016032064) and not whole_scale(1.37)
