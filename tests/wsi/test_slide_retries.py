"""wsi_segment.wsi.slide read errors: transient I/O errors are retried on a fresh reader, bounded, and
named; corrupt tile data is not retried and does not poison the slide.

The transient errors come from a real fsspec file system that fails on purpose
(`flakytest://`, EIO from its byte-range fetches), so the retry runs through the same
buffered-file machinery as s3fs or http would.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import fsspec
import numpy as np
import pytest
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from tests.conftest import CMU_SLIDE, corrupt_middle_tile
from wsi_segment.errors import SlideError
from wsi_segment.wsi.slide import READ_ATTEMPTS, is_transient, open_slide


class FlakyFileSystem(AbstractFileSystem):
    """Local files behind fsspec's buffered-file machinery (as s3fs/http use), under the
    `flakytest://` protocol; the next `failures` byte-range fetches raise EIO."""

    protocol = "flakytest"
    failures = 0
    fetches = 0

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return path[len("flakytest://") :] if path.startswith("flakytest://") else path

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        return {"name": path, "size": os.stat(path).st_size, "type": "file"}

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kw):
        return FlakyFile(self, path, mode, block_size=block_size or 2**16, cache_type="none")


class FlakyFile(AbstractBufferedFile):
    def _fetch_range(self, start: int, end: int) -> bytes:
        FlakyFileSystem.fetches += 1
        if FlakyFileSystem.failures > 0:
            FlakyFileSystem.failures -= 1
            raise OSError(errno.EIO, "injected network hiccup")
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


@pytest.fixture
def flaky_url():
    fsspec.register_implementation("flakytest", FlakyFileSystem, clobber=True)
    FlakyFileSystem.failures = 0
    yield "flakytest://" + str(CMU_SLIDE.resolve())
    FlakyFileSystem.failures = 0


def test_is_transient_tells_io_from_decode_errors():
    assert is_transient(OSError(errno.EIO, "io"))
    assert is_transient(TimeoutError()) and is_transient(ConnectionResetError())
    wrapped = ValueError("zarr said no")
    wrapped.__cause__ = OSError(errno.EIO, "io")
    assert is_transient(wrapped)
    assert not is_transient(FileNotFoundError(2, "gone"))
    assert not is_transient(PermissionError(13, "denied"))
    assert not is_transient(ValueError("corrupted tile")) and not is_transient(RuntimeError())
    assert is_transient(OSError("remote read failed"))  # fsspec file systems: often no errno
    # waiting does not free a disk or make a file system writable
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(OSError(errno.EROFS, "Read-only file system"))


def test_running_out_of_file_descriptors_is_not_transient() -> None:
    """The limit is the process's, and mostly filled by the run itself: a retry meets it
    again. Before, an OSError carrying only the words (no errno: transient by the rule) and
    a timeout raised while out of descriptors were retried."""
    assert not is_transient(OSError(errno.EMFILE, "Too many open files"))
    assert not is_transient(OSError(errno.ENFILE, "Too many open files in system"))
    assert not is_transient(OSError("[Errno 24] Too many open files"))
    timeout = TimeoutError("the read timed out")
    timeout.__context__ = OSError(errno.EMFILE, "Too many open files")
    assert not is_transient(timeout)


@pytest.mark.parametrize(("status", "passes"), [(500, True), (503, True), (429, True),
                                               (403, False), (404, False), (416, False)])  # fmt: skip
def test_an_http_stores_server_errors_are_transient(status: int, passes: bool) -> None:
    """fsspec's HTTP file system raises aiohttp's ClientResponseError: a 503 was not retried
    and was reported as a damaged file; a 403 or 404 does not pass by waiting."""
    import aiohttp

    error = aiohttp.ClientResponseError(None, (), status=status, message="from the server")  # type: ignore[arg-type]
    assert is_transient(error) is passes
    wrapped = ValueError("tifffile could not read the tile")
    wrapped.__cause__ = error
    assert is_transient(wrapped) is passes


def test_one_transient_rule_for_slide_reads_and_flow_retries():
    from wsi_segment.flows import slide_flow
    from wsi_segment.wsi import retries

    assert slide_flow.is_transient is retries.is_transient is is_transient


def test_transient_read_errors_are_retried_then_succeed(flaky_url, cmu_pixels, caplog):
    with open_slide(flaky_url) as slide:
        assert slide.backend == "tiffslide"
        region = slide.read_region((600, 900), 0, (300, 200))  # warm up: reader open
        # inside one 240-px storage tile, so each attempt makes one failing fetch (a region
        # over several tiles fetches them concurrently and would use up several failures)
        FlakyFileSystem.failures = READ_ATTEMPTS - 1  # fail all but the last attempt
        with caplog.at_level(logging.WARNING, logger="wsi_segment.wsi.slide"):
            region = slide.read_region((1205, 1445), 0, (230, 200))
        assert FlakyFileSystem.failures == 0
    assert np.array_equal(region, cmu_pixels[1445:1645, 1205:1435])
    retries = [r for r in caplog.records if "injected network hiccup" in r.getMessage()]
    assert len(retries) == READ_ATTEMPTS - 1


def test_transient_error_at_open_is_retried(flaky_url):
    FlakyFileSystem.failures = 1
    with open_slide(flaky_url) as slide:
        assert slide.dimensions == (2220, 2967)
    assert FlakyFileSystem.failures == 0


def test_persistent_read_errors_give_one_clear_bounded_error(flaky_url):
    slide = open_slide(flaky_url)
    FlakyFileSystem.failures = 10**6
    start = time.monotonic()
    with pytest.raises(SlideError) as err:
        slide.read_region((100, 200), 0, (64, 32))
    elapsed = time.monotonic() - start
    used = 10**6 - FlakyFileSystem.failures
    FlakyFileSystem.failures = 0
    text = str(err.value)
    assert flaky_url in text and "region (100, 200) size (64, 32) at level 0" in text
    assert f"{READ_ATTEMPTS} attempts" in text and "injected network hiccup" in text
    assert "network" in text  # what to check
    assert used == READ_ATTEMPTS  # one failing fetch per attempt, then it stops
    assert elapsed < 3.0
    # the slide recovers once the file system does
    assert slide.read_region((100, 200), 0, (64, 32)).shape == (32, 64, 3)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_is_not_retried_and_does_not_poison_the_slide(
    backend, tmp_path, cmu_pixels, caplog
):
    path = tmp_path / "corrupt.svs"
    x, y = corrupt_middle_tile(CMU_SLIDE, path)
    with open_slide(path, backend) as slide:
        start = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, logger="wsi_segment.wsi.slide"),
            pytest.raises(SlideError, match="truncated or corrupt") as err,
        ):
            slide.read_region((x + 10, y + 10), 0, (100, 100))
        assert time.monotonic() - start < 0.15  # no retry sleeps
        assert f"region ({x + 10}, {y + 10}) size (100, 100)" in str(err.value)
        assert not caplog.records
        # openslide fails every later call on a handle once one read failed: the reader
        # is replaced, so the good tiles still read
        assert np.array_equal(slide.read_region((0, 0), 0, (64, 64)), cmu_pixels[:64, :64])


@pytest.mark.slow  # two requests of READ_IDLE_S each (~2 min)
def test_an_http_server_that_never_answers_fails_the_open_in_bounded_time() -> None:
    """A server that accepts connections and then says nothing (hung mid-night) held each
    request for aiohttp's 300 s; the open (HEAD, then a GET) now fails once a request has
    received nothing for READ_IDLE_S."""
    import socket
    import time

    from wsi_segment.errors import SlideError
    from wsi_segment.wsi.slide import open_slide
    from wsi_segment.wsi.slide_path import READ_IDLE_S

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel accepts; nothing ever answers
        url = f"http://127.0.0.1:{server.getsockname()[1]}/slide.svs"
        start = time.monotonic()
        with pytest.raises(SlideError):
            open_slide(url)
        assert time.monotonic() - start < 3 * READ_IDLE_S
