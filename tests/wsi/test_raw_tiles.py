"""Storage tiles as complete JPEG streams: the header alone makes any libjpeg decode them to
exactly tiffslide's pixels, and what cannot be served says why."""

from __future__ import annotations

import pickle
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from tests.conftest import CMU_SLIDE, DATA_DIR
from wsi_segment.errors import JpegHeaderError
from wsi_segment.wsi.jpeg_header import ADOBE_RGB, read_header, splice_tables
from wsi_segment.wsi.raw_tiles import JpegTiles, Unsupported, open_jpeg_tiles
from wsi_segment.wsi.slide import open_slide

SMALL_SVS = DATA_DIR / "small.svs"
OME_TIFF = DATA_DIR / "OS-1-detail.ome.tif"


def _tiles(path: Path, level: int = 0) -> JpegTiles:
    with open_slide(str(path), "tiffslide", mpp=0.5) as slide:
        size = slide.level_dimensions[level]
    tiles = open_jpeg_tiles(str(path), level, size)
    assert isinstance(tiles, JpegTiles), tiles
    return tiles


def _tiffslide_tile(path: Path, tiles: JpegTiles, col: int, row: int) -> np.ndarray:
    """tiffslide's pixels of storage tile (col, row), clipped to the level."""
    (tw, th), (lw, lh) = tiles.tile_size, tiles.level_size
    x0, y0 = col * tw, row * th
    w, h = min(tw, lw - x0), min(th, lh - y0)
    with open_slide(str(path), "tiffslide", mpp=0.5) as slide:
        return slide.read_region((x0, y0), tiles.level, (w, h))


def test_aperio_tiles_are_rgb_coded_and_get_the_marker_that_says_so():
    with tifffile.TiffFile(CMU_SLIDE) as tf:
        page = tf.pages[0]
        tf.filehandle.seek(page.dataoffsets[0])
        abbreviated = tf.filehandle.read(page.databytecounts[0])
        tables = page.jpegtables
    # As stored: component ids 0, 1, 2, no JFIF, no APP14; a bare decoder assumes YCbCr
    stored = read_header(splice_tables(tables, abbreviated))
    assert stored.component_ids == (0, 1, 2)
    assert stored.sampling == ((1, 1), (1, 1), (1, 1))
    assert (stored.jfif, stored.adobe_transform) == (False, None)
    assert stored.guessed_colour == "ycbcr" and not stored.says_ycbcr
    tiles = _tiles(CMU_SLIDE)
    assert (tiles.colour, tiles.subsampling, tiles.prefix) == ("rgb", (1, 1), ADOBE_RGB)
    assert tiles.grid == (10, 13) and tiles.tile_size == (240, 240)
    assert not tiles.colour_safe_anywhere
    served = read_header(tiles.stream(0, 0))
    assert served.adobe_transform == 0 and served.guessed_colour == "rgb"


def test_jfif_tiles_are_ycbcr_420_and_served_unchanged():
    tiles = _tiles(OME_TIFF)
    assert (tiles.colour, tiles.subsampling, tiles.prefix, tiles.tables) == (
        "ycbcr",
        (2, 2),
        b"",
        None,
    )
    assert tiles.colour_safe_anywhere
    with tifffile.TiffFile(OME_TIFF) as tf:
        page = tf.pages[0]
        tf.filehandle.seek(page.dataoffsets[4])
        assert tiles.stream(1, 1) == tf.filehandle.read(page.databytecounts[4])


@pytest.mark.parametrize("path", [CMU_SLIDE, SMALL_SVS, OME_TIFF], ids=lambda p: p.name)
def test_every_stream_decodes_from_its_header_alone_to_tiffslides_pixels(path):
    """imagecodecs is told nothing out of band (no tables, no colour space): same pixels
    as tiffslide's read, which decodes with the TIFF's tags. Edge tiles are padded to the
    full tile size; their part inside the level is what counts."""
    tiles = _tiles(path)
    cols, rows = tiles.grid
    for row in range(rows):
        for col in range(cols):
            decoded = imagecodecs.jpeg8_decode(tiles.stream(col, row))
            assert decoded.shape == (tiles.tile_size[1], tiles.tile_size[0], 3)
            ref = _tiffslide_tile(path, tiles, col, row)
            np.testing.assert_array_equal(decoded[: ref.shape[0], : ref.shape[1]], ref)


def test_tiles_pickle_without_the_open_file():
    tiles = _tiles(CMU_SLIDE)
    first = tiles.stream(3, 2)
    copy = pickle.loads(pickle.dumps(tiles))
    assert copy._fd is None
    assert copy.stream(3, 2) == first
    copy.close()
    tiles.close()
    with pytest.raises(IndexError):
        tiles.stream(10, 0)


def _write(path: Path, compression: str | None, tile: tuple[int, int] | None) -> Path:
    data = np.random.default_rng(3).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    tifffile.imwrite(path, data, photometric="rgb", compression=compression, tile=tile)
    return path


def test_what_cannot_be_served_says_why(tmp_path):
    def reason(path: Path | str, level: int = 0, size: tuple[int, int] = (120, 100)) -> str:
        found = open_jpeg_tiles(str(path), level, size)
        assert isinstance(found, Unsupported)
        return found.reason

    assert reason(_write(tmp_path / "j2k.tif", "jpeg2000", (64, 64))).startswith("JPEG 2000")
    assert reason(_write(tmp_path / "zip.tif", "zlib", (64, 64))) == (
        "ADOBE_DEFLATE compression, not JPEG"
    )
    assert reason(_write(tmp_path / "strips.tif", "jpeg", None)) == "stored in strips, not tiles"
    assert reason(DATA_DIR / "boxes.tiff") == "ADOBE_DEFLATE compression, not JPEG"
    assert reason(DATA_DIR / "broken.svs").startswith("not a readable TIFF")
    assert reason(CMU_SLIDE, 0, (2220, 2966)) == "the TIFF level's size differs from the slide's"
    assert reason(CMU_SLIDE, 1) == "the TIFF's first series has no level 1"
    assert reason("s3://bucket/slide.svs") == "not a local file"
    jpeg = _write(tmp_path / "jpeg.tif", "jpeg", (64, 64))
    assert isinstance(open_jpeg_tiles(str(jpeg), 0, (120, 100)), JpegTiles)
    cut = tmp_path / "cut.tif"  # tifffile writes the directory first: it survives the cut
    cut.write_bytes(jpeg.read_bytes()[:-100])
    assert reason(cut) == "tiles point past the end of the file (truncated)"


def test_header_reader_refuses_what_is_not_a_jpeg_stream():
    with pytest.raises(JpegHeaderError, match="SOI"):
        read_header(b"\x89PNG\r\n")
    with pytest.raises(JpegHeaderError, match="first scan"):
        read_header(b"\xff\xd8\xff\xd9")
    with pytest.raises(JpegHeaderError, match="JPEGTables"):
        splice_tables(b"\xff\xd8\xff\xdb", b"\xff\xd8\xff\xd9")
