"""wsi_segment.wsi.slide_path: the path a slide is found by, in every process and later."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE
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
