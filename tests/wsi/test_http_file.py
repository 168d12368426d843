"""wsi_segment.wsi.http_file: a slide whose HTTP server does not serve byte ranges is named
so, with the fix, when it is opened (it was reported as a corrupt or truncated file)."""

from __future__ import annotations

import http.server
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.conftest import CMU_SLIDE
from tests.wsi.http_servers import NoRangesHandler, RangeHandler, served
from wsi_segment.errors import NoByteRanges
from wsi_segment.wsi.retries import is_transient
from wsi_segment.wsi.slide import open_slide


def _noise_slide(path: Path, side: int = 1536) -> None:
    """A tiled RGB TIFF of `side` x `side` pixels of noise: 3 bytes a pixel (7 MB), over
    fsspec's 5 MB block."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb")
    assert path.stat().st_size > 5 * 2**20


def _assert_no_byte_ranges(url: str, why: str) -> None:
    """Opening `url` fails with NoByteRanges naming the URL, the cause and the fix; not
    transient (neither the reads' retries nor the flows' retry it)."""
    with pytest.raises(NoByteRanges) as caught:
        open_slide(url)
    assert caught.type is NoByteRanges and not is_transient(caught.value)
    assert str(caught.value) == (
        f"{url}: the server does not serve byte ranges ({why}), which reading a whole-slide "
        "image over HTTP needs (each read fetches only the part of the file it uses); serve "
        "the slide from a server or object store that supports HTTP Range requests (S3 or "
        "another object store, nginx, Apache), or copy it to a local disk and give its path"
    )


def test_a_server_that_ignores_range_requests_is_named_at_open(tmp_path: Path) -> None:
    """Python's own server answers `Range:` with the whole file: a slide over fsspec's 5 MB
    block failed deep in tifffile, at open as a "corrupted tag list" or later as a region
    "truncated or corrupt; copy it again". Now the open says what is wrong and the fix. A
    slide within one block still reads: its first request fetches it whole."""
    _noise_slide(tmp_path / "big.tif")
    shutil.copy(CMU_SLIDE, tmp_path / "small.svs")
    with served(tmp_path, http.server.SimpleHTTPRequestHandler) as base:
        _assert_no_byte_ranges(
            f"{base}/big.tif", "asked for the slide's last byte, it sends the whole file"
        )
        with open_slide(f"{base}/small.svs") as slide:
            assert slide.dimensions == (2220, 2967)
            assert slide.read_region((2200, 2950), 0, (20, 17)).shape == (17, 20, 3)


def test_a_server_saying_accept_ranges_none_is_named_at_open(tmp_path: Path) -> None:
    """fsspec reads such a server's file as a stream, which tifffile cannot seek: every
    slide, however small, failed as "not a readable slide (... Cannot seek streaming HTTP
    file)"."""
    shutil.copy(CMU_SLIDE, tmp_path / "small.svs")
    with served(tmp_path, NoRangesHandler) as base:
        _assert_no_byte_ranges(
            f"{base}/small.svs", "it says Accept-Ranges: none, or does not give the file's size"
        )


def test_a_server_that_serves_ranges_reads_a_large_slide(tmp_path: Path) -> None:
    """The open's question costs one byte and refuses nothing a server serves in parts."""
    _noise_slide(tmp_path / "big.tif")
    with (
        served(tmp_path, RangeHandler) as base,
        open_slide(f"{base}/big.tif") as remote,
        open_slide(tmp_path / "big.tif") as local,
    ):
        where = ((1400, 1500), 0, (136, 36))  # the bottom right corner: the file's last tile
        assert (remote.read_region(*where) == local.read_region(*where)).all()
