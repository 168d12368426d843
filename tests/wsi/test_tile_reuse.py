"""Planned storage-tile reuse: identical pixels to direct reads, each tile decoded once."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tile_reuse import TileReuse, supports_reuse


def _chunk_boxes(width: int, height: int, step: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Raster-ordered overlapping boxes like chunk reads: a halo past every border, so boxes
    start left of / above the slide and end past it."""
    return [
        (x - halo, y - halo, x + step + halo, y + step + halo)
        for y in range(0, height, step)
        for x in range(0, width, step)
    ]


def _unique_tiles(boxes, w, h, tile):
    keys = set()
    for x0, y0, x1, y1 in boxes:
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x0 < x1 and y0 < y1:
            keys |= {
                (c, r)
                for r in range(y0 // tile, (y1 - 1) // tile + 1)
                for c in range(x0 // tile, (x1 - 1) // tile + 1)
            }
    return keys


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_same_pixels_as_direct_reads_and_each_tile_decoded_once(backend):
    slide = open_slide(CMU_SLIDE, backend=backend)
    tile = slide.storage_tile_size(0)
    assert tile == (240, 240) and supports_reuse(slide, 0, tile)
    w, h = slide.dimensions
    boxes = _chunk_boxes(w, h, step=700, halo=37)  # not a multiple of the 240 px tiles
    reuse = TileReuse(0, (w, h), 1.0, tile, boxes)
    for x0, y0, x1, y1 in boxes:
        got = reuse.read(slide, x0, y0, x1 - x0, y1 - y0)
        np.testing.assert_array_equal(got, slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0)))
    unique = _unique_tiles(boxes, w, h, 240)
    assert reuse.tiles_decoded == len(unique)  # never twice
    assert reuse.tiles_reused > 0
    assert reuse.planned.kept_bytes == 0  # every tile dropped after its last planned use


def test_memory_cap_falls_back_to_decoding_again():
    slide = open_slide(CMU_SLIDE, backend="tiffslide")
    w, h = slide.dimensions
    boxes = _chunk_boxes(w, h, step=700, halo=37)
    reuse = TileReuse(0, (w, h), 1.0, (240, 240), boxes, max_bytes=0)
    for x0, y0, x1, y1 in boxes:
        got = reuse.read(slide, x0, y0, x1 - x0, y1 - y0)
        np.testing.assert_array_equal(got, slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0)))
    assert reuse.tiles_reused == 0
    assert reuse.tiles_decoded > len(_unique_tiles(boxes, w, h, 240))


def test_unplanned_and_outside_reads():
    slide = open_slide(CMU_SLIDE, backend="tiffslide")
    w, h = slide.dimensions
    reuse = TileReuse(0, (w, h), 1.0, (240, 240), planned=[])
    inside = reuse.read(slide, 1000, 1000, 300, 200)
    np.testing.assert_array_equal(inside, slide.read_region((1000, 1000), 0, (300, 200)))
    outside = reuse.read(slide, w + 10, -500, 50, 40)
    assert outside.shape == (40, 50, 3) and (outside == 255).all()
    assert reuse.planned.kept_bytes == 0  # nothing planned, nothing kept


def test_reuse_needs_tiles_and_an_integer_downsample():
    class Level:
        level_downsamples = (1.0, 4.000451)
        level_dimensions = ((1000, 1000), (250, 250))

    assert supports_reuse(Level(), 0, (256, 256))
    assert not supports_reuse(Level(), 1, (256, 256))  # location rounding could shift a tile
    assert not supports_reuse(Level(), 0, None)  # strips / untiled storage
