"""Storage tiles decoded straight from a TIFF: the slide's own pixels, or None."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import CMU_SLIDE
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiff_blocks import LevelBlocks, open_level_blocks
from wsi_segment.wsi.tile_reuse import TileReuse

DATA = Path(__file__).resolve().parents[1] / "data"


def _level_tiles(slide, level: int):
    """Every storage tile (column, row) of the level."""
    (w, h), (tw, th) = slide.level_dimensions[level], slide.storage_tile_size(level)
    return [(c, r) for r in range(-(-h // th)) for c in range(-(-w // tw))]


def _slide_pixels(slide, level: int, box):
    x0, y0, x1, y1 = box
    ds = slide.level_downsamples[level]
    return slide.read_region((round(x0 * ds), round(y0 * ds)), level, (x1 - x0, y1 - y0))


def _tile_box(slide, level: int, key):
    """Storage tile `key`'s level box, cut by the level's edges."""
    (w, h), (tw, th) = slide.level_dimensions[level], slide.storage_tile_size(level)
    c, r = key
    return c * tw, r * th, min((c + 1) * tw, w), min((r + 1) * th, h)


def _reads_like_the_slide(reuse: TileReuse, slide, boxes) -> None:
    for x0, y0, x1, y1 in boxes:
        got = reuse.read(slide, x0, y0, x1 - x0, y1 - y0)
        np.testing.assert_array_equal(got, slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0)))


@pytest.mark.parametrize(
    "name", ["CMU-1-Small-Region.svs", "OS-1-detail.ome.tif", "boxes.tiff", "small.svs"]
)
def test_every_tile_of_every_level_is_the_slides_own_pixels(name):
    slide = open_slide(str(DATA / name), backend="tiffslide")
    for level in range(slide.level_count):
        blocks = open_level_blocks(slide, level)
        assert blocks is not None, (name, level)
        keys = _level_tiles(slide, level)
        tiles = blocks.read_tiles(keys)
        assert tiles is not None and list(tiles) == keys
        # the whole level in one read from its origin: exact at levels whose downsample is
        # not whole too (boxes.tiff's 4.016), where a read located at a tile rounds
        whole = slide.read_region((0, 0), level, slide.level_dimensions[level])
        for key, tile in tiles.items():
            x0, y0, x1, y1 = _tile_box(slide, level, key)
            np.testing.assert_array_equal(tile, whole[y0:y1, x0:x1])


def _jpeg_tiff(path: Path, size=(200, 328), tile=64, dtype=np.uint8) -> Path:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (*size, 3)).astype(dtype)
    image = np.repeat(np.repeat(image[::8, ::8], 8, 0), 8, 1)[: size[0], : size[1]]
    jpeg = "jpeg" if dtype == np.uint8 else "zlib"
    tifffile.imwrite(path, image, photometric="rgb", compression=jpeg, tile=(tile, tile))
    return path


def _drop_tile(path: Path, index: int) -> None:
    """Mark one storage tile as not stored (byte count 0), as scanners leave empty tiles."""
    with tifffile.TiffFile(path, mode="r+b") as tf:
        tag = tf.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[index] = 0
        tag.overwrite(tuple(counts))


def test_a_block_with_a_missing_tile_is_left_to_the_slide(tmp_path):
    path = _jpeg_tiff(tmp_path / "holes.tif")
    _drop_tile(path, 0)  # top-left tile; the probe reads the centre one
    slide = open_slide(str(path), backend="tiffslide", mpp=0.5)
    blocks = open_level_blocks(slide, 0)
    assert blocks is not None
    assert blocks.read_tiles([(0, 0), (1, 0), (0, 1), (1, 1)]) is None
    assert blocks.read_tiles([(2, 0), (3, 0), (2, 1), (3, 1)]) is not None
    # through TileReuse: the read with the hole comes from the slide, the other directly
    w, h = slide.dimensions
    boxes = [(0, 0, 100, 100), (150, 10, 300, 190)]
    reuse = TileReuse(0, (w, h), 1.0, (64, 64), boxes, blocks=blocks)
    _reads_like_the_slide(reuse, slide, boxes)
    assert reuse.blocks_direct == 1


def test_what_it_does_not_serve_goes_to_the_slide(tmp_path):
    assert open_level_blocks(open_slide(CMU_SLIDE, backend="openslide"), 0) is None
    wide = _jpeg_tiff(tmp_path / "u16.tif", dtype=np.uint16)
    assert open_level_blocks(open_slide(str(wide), backend="tiffslide", mpp=0.5), 0) is None
    strips = tmp_path / "strips.tif"
    tifffile.imwrite(strips, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert open_level_blocks(open_slide(str(strips), backend="tiffslide", mpp=0.5), 0) is None


def test_pickles_to_its_numbers_and_reads_where_it_lands():
    slide = open_slide(CMU_SLIDE, backend="tiffslide")
    blocks = open_level_blocks(slide, 0)
    assert isinstance(blocks, LevelBlocks)
    assert blocks._decoder is not None  # set up by the probe; it does not pickle
    copy = pickle.loads(pickle.dumps(blocks))
    assert copy._decoder is None
    tiles = copy.read_tiles([(2, 3)])
    assert tiles is not None
    np.testing.assert_array_equal(tiles[(2, 3)], _slide_pixels(slide, 0, (480, 720, 720, 960)))


def test_tiles_come_cut_to_the_level_and_whole_requests_only():
    slide = open_slide(CMU_SLIDE, backend="tiffslide")
    blocks = open_level_blocks(slide, 0)
    assert blocks is not None
    # CMU-1-Small-Region: 2220 x 2967 px in 240 px tiles, so the last tile is 60 x 87 px
    tiles = blocks.read_tiles([(9, 12), (0, 0)])
    assert tiles is not None and tiles[(9, 12)].shape == (87, 60, 3)
    np.testing.assert_array_equal(tiles[(9, 12)], _slide_pixels(slide, 0, (2160, 2880, 2220, 2967)))
    np.testing.assert_array_equal(tiles[(0, 0)], _slide_pixels(slide, 0, (0, 0, 240, 240)))
    assert blocks.read_tiles([(0, 0), (10, 0)]) is None  # a tile past the level: all or none


def test_reuse_decodes_only_the_missing_tiles_when_it_decodes_directly():
    slide = open_slide(CMU_SLIDE, backend="tiffslide")
    blocks = open_level_blocks(slide, 0)
    w, h = slide.dimensions
    # the second box needs tiles (0..2, 0..1); the first already decoded (0, 0) and (1, 0),
    # kept for it: only the other 4 are decoded, not the 6 of their bounding box
    boxes = [(0, 0, 400, 200), (0, 0, 700, 400)]
    reuse = TileReuse(0, (w, h), 1.0, (240, 240), boxes, blocks=blocks)
    _reads_like_the_slide(reuse, slide, boxes)
    assert (reuse.tiles_decoded, reuse.tiles_reused, reuse.blocks_direct) == (6, 2, 2)
