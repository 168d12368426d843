"""wsi_segment.wsi.slide_path: the path a slide is found by, in every process and later."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR
from tests.wsi.http_servers import served
from wsi_segment.wsi.slide_path import absolute_slide_path


def test_a_slide_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask workers on other machines, or started in another directory, open the slide by
    it, and summary.json records it: a relative path given on the command line is made
    absolute (a link or a folder is kept, not resolved); a URL stays as it is."""
    shutil.copy(CMU_SLIDE, tmp_path / "slide.svs")
    (tmp_path / "link.svs").symlink_to("slide.svs")
    monkeypatch.chdir(tmp_path)
    assert absolute_slide_path("slide.svs") == str(tmp_path / "slide.svs")
    assert absolute_slide_path("link.svs") == str(tmp_path / "link.svs")
    assert absolute_slide_path("file://slide.svs") == str(tmp_path / "slide.svs")
    assert absolute_slide_path("s3://bucket/a.tif") == "s3://bucket/a.tif"
    monkeypatch.chdir("/")
    assert Path(absolute_slide_path(str(tmp_path / "slide.svs"))).is_file()


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP by Python's own server (sizes and Last-Modified headers, as
    a plain web server gives): (folder, its URL)."""
    import http.server

    with served(tmp_path, http.server.SimpleHTTPRequestHandler) as url:
        yield tmp_path, url


def test_a_slide_replaced_under_its_url_is_another_slide(http_folder: tuple[Path, str]) -> None:
    """A remote slide was identified by its URL alone: one replaced under the same URL was
    reported "up to date" and its old outputs kept. What the server says of the object is
    part of its identity now, and stays the same while the object does."""
    import os

    from wsi_segment.pipeline.outputs.run_identity import slide_identity

    folder, base = http_folder
    shutil.copy(CMU_SLIDE, folder / "case.svs")
    os.utime(folder / "case.svs", (1_700_000_000, 1_700_000_000))
    url = f"{base}/case.svs"
    first = slide_identity(url)
    assert first["url"] == url and first["size"] == str(CMU_SLIDE.stat().st_size)
    assert first["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert slide_identity(url) == first  # unchanged: the same slide
    shutil.copy(DATA_DIR / "small.svs", folder / "case.svs")  # replaced under its URL
    assert slide_identity(url) != first
