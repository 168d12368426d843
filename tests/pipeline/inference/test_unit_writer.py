"""Write units: what one writer stitches, writes and traces at once."""

from __future__ import annotations

import numpy as np
import pytest

from tests.wsi.test_tiling import Dims, Mask
from wsi_segment.pipeline.inference.unit_writer import write_units
from wsi_segment.wsi.tiling import STORE_TILES, TileGrid, plan_chunks


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_every_write_unit_holds_whole_zarr_chunks_even_a_lone_chunk(n):
    """A unit covers whole zarr chunks (`STORE_TILES` tile cores) whatever the chunk size,
    even where only one small chunk of a zarr chunk has tissue: polygons are traced per zarr
    chunk (`SlideJob.polygon_cell`), and a lone 2 x 2 chunk at output (32, 32) once made the
    writer fail ("block at (32, 32) must start on the 64 px grid of cells")."""
    grid = TileGrid(tile=64, overlap=16, downsample=4)  # 12 output px a tile core
    tissue = np.zeros((100, 130), bool)
    tissue[40:44, 50:53] = True  # a speck: one small chunk of its zarr chunk has tissue
    tissue[5:60, 90:125] = True  # and a region: many chunks of their zarr chunks
    plan = plan_chunks(Dims((1300, 1000)), 0.5, 1.0, grid, n, Mask(tissue, 10.0))
    cell = STORE_TILES * 12
    units = write_units(plan.specs)
    assert sum(len(u.spec.tiles) for u in units) == sum(len(s.tiles) for s in plan.specs)
    lone_small = 0
    for unit in units:
        x0, y0, x1, y1 = unit.spec.out_box
        assert x0 % cell == 0 and y0 % cell == 0, unit.spec.out_box
        h, w = plan.output_shape
        assert (x1 - x0 == w - x0 or (x1 - x0) % cell == 0) and (
            y1 - y0 == h - y0 or (y1 - y0) % cell == 0
        )
        lone_small += len(unit.starts) == 1 and n < STORE_TILES
    assert lone_small or n >= STORE_TILES  # the case that failed is in the plan
