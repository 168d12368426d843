"""A slide whose declared size its file cannot back, or whose thumbnail would decode tens of
gigapixels, is refused before anything reads or plans in proportion to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import SlideError
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.slide_limits import (
    MAX_PIXELS_PER_BYTE,
    MAX_THUMBNAIL_GIGAPIXELS,
    check_slide_size,
)

TILE = 4096


def write_sparse_tiff(path: Path, width: int, height: int, pad: int = 0) -> Path:
    """A single-level tiled-JPEG TIFF declaring width x height px with one tile stored (the
    rest have no bytes); `pad` bytes of description make the file that much larger."""
    import imagecodecs
    import tifffile

    tile = np.full((TILE, TILE, 3), 230, np.uint8)
    tile[:1000, :1000] = (180, 80, 150)
    first = imagecodecs.jpeg_encode(tile, level=90)
    n = -(-width // TILE) * -(-height // TILE)
    tiles = iter([first, *([b""] * (n - 1))])
    tifffile.imwrite(
        path,
        tiles,
        shape=(height, width, 3),
        dtype="uint8",
        tile=(TILE, TILE),
        compression="jpeg",
        photometric="rgb",
        resolution=(20000, 20000),  # 0.5 um/px
        resolutionunit="CENTIMETER",
        description="x" * pad if pad else None,
    )
    return path


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_a_tiny_file_declaring_a_terapixel_is_refused(tmp_path, backend):
    path = write_sparse_tiff(tmp_path / "absurd.tif", 10**6, 10**6)
    assert path.stat().st_size < 10**6
    with open_slide(str(path), backend=backend) as slide:
        assert slide.dimensions == (10**6, 10**6) and len(slide.level_dimensions) == 1
        with pytest.raises(SlideError) as err:
            check_slide_size(slide)
    msg = str(err.value)
    assert msg.startswith(f"{path}: declares 1000000 x 1000000 px (1,000 gigapixels)")
    assert "most of its tiles are not stored" in msg and "copy it again" in msg


def test_a_single_level_slide_too_big_to_thumbnail_is_refused_with_the_fix(tmp_path):
    """20 gigapixels, backed by enough bytes, but with no smaller level to read."""
    w, h = 200_000, 100_000
    pad = w * h // MAX_PIXELS_PER_BYTE + 1
    path = write_sparse_tiff(tmp_path / "flat.tif", w, h, pad=pad)
    assert w * h > MAX_THUMBNAIL_GIGAPIXELS * 1e9
    with open_slide(str(path)) as slide, pytest.raises(SlideError) as err:
        check_slide_size(slide)
    msg = str(err.value)
    assert f"no level smaller than {w} x {h} px" in msg and "decode 20 gigapixels" in msg
    assert f"vips tiffsave {path} pyramid.tif --tile --pyramid" in msg and "bfconvert" in msg


def test_real_slides_pass(tmp_path):
    with open_slide(str(CMU_SLIDE)) as slide:
        check_slide_size(slide)
    # a single-level 10 gigapixel slide is still read (its thumbnail decodes all of it)
    path = write_sparse_tiff(tmp_path / "ten.tif", 100_000, 100_000, pad=10**6)
    with open_slide(str(path)) as slide:
        check_slide_size(slide)
