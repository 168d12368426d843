"""wsi_segment.wsi.slide_path and shown_path: the path a slide is found by, in every process and
later, and the path it is shown by."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR
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


def test_a_slide_replaced_under_its_url_is_another_slide(http_folder: tuple[Path, str]) -> None:
    """A remote slide was identified by its URL alone: one replaced under the same URL was
    reported "up to date" and its old outputs kept. What the server says of the object is
    part of its identity now, and stays the same while the object does. A presigned URL's
    query, signed anew each night, is not: the same object is the same slide."""
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
    signed = slide_identity(f"{url}?X-Amz-Date=20261127&X-Amz-Signature=0123abcd")
    assert signed == {**first, "url": f"{url}?<query removed>"}  # no signature kept
    assert slide_identity(f"{url}?X-Amz-Date=20261128&X-Amz-Signature=4567ef01") == signed
    shutil.copy(DATA_DIR / "small.svs", folder / "case.svs")  # replaced under its URL
    assert slide_identity(url) != first
    assert slide_identity(f"{url}?X-Amz-Date=20261129&X-Amz-Signature=89ab") != signed


def test_a_url_is_shown_without_its_query_fragment_or_password() -> None:
    """A presigned URL's query (its credential and signature) was written whole into
    summary.json, cohort.csv, the report and the logs: it is shown as removed; a local path,
    a `file://` one too, is shown as it is, and what is shown stays so when shown again."""
    from wsi_segment.wsi.shown_path import shown_slide_path

    presigned = (
        "https://bucket.s3.amazonaws.com/a/CMU-1.svs?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20261128&X-Amz-Signature=0123abcd"
    )
    cases = {
        presigned: "https://bucket.s3.amazonaws.com/a/CMU-1.svs?<query removed>",
        "https://h/x.svs?sig=1#token=2": "https://h/x.svs?<query removed>#<fragment removed>",
        "http://alice:S3CRET@h:8080/x.svs?a=b": "http://alice:***@h:8080/x.svs?<query removed>",
        "http://alice@h/x.svs": "http://alice@h/x.svs",
        "s3://bucket/x.svs": "s3://bucket/x.svs",
        "https://h/x.svs?": "https://h/x.svs?",  # an empty query hides nothing
        "/data/odd?name#1.svs": "/data/odd?name#1.svs",
        "file:///data/odd?name.svs": "file:///data/odd?name.svs",
    }
    for given, shown in cases.items():
        assert shown_slide_path(given) == shown, given
        assert shown_slide_path(shown) == shown, shown


def test_every_url_in_a_message_is_shown_so() -> None:
    """A library's error quotes the URL it requested (fsspec's FileNotFoundError, aiohttp's
    `url=URL('...')`): each URL of a message is shown as `shown_slide_path` shows it, and the
    sentence around it is kept."""
    from wsi_segment.wsi.shown_path import shown_text

    url = "https://h/x.svs?X-Amz-Signature=0123abcd"
    message = (
        f"{url}: not a readable slide (tiffslide: FileNotFoundError: {url}; "
        f"403, message='Forbidden', url=URL('{url}')). See <{url}>, or (s3://b/y.svs)."
    )
    shown = "https://h/x.svs?<query removed>"
    assert shown_text(message) == (
        f"{shown}: not a readable slide (tiffslide: FileNotFoundError: {shown}; "
        f"403, message='Forbidden', url=URL('{shown}')). See <{shown}>, or (s3://b/y.svs)."
    )
    assert shown_text(shown_text(message)) == shown_text(message)


def test_a_presigned_slide_is_read_by_its_whole_url_in_every_process(
    http_folder: tuple[Path, str],
) -> None:
    """Only what is shown loses the query: the slide keeps the whole URL, also as pickled
    for a Dask worker or a decoder process, which reads it there (the store refuses a URL
    without its signature), while its `info` and repr show the query removed."""
    import pickle

    from wsi_segment.wsi.slide import open_slide

    folder, base = http_folder
    shutil.copy(CMU_SLIDE, folder / "case.svs")
    url = f"{base}/case.svs?X-Amz-Signature=0123abcd"
    with open_slide(url) as slide:
        again = pickle.loads(pickle.dumps(slide))
        assert (slide.path, again.path) == (url, url)
        assert slide.info()["path"] == f"{base}/case.svs?<query removed>"
        assert "0123abcd" not in repr(slide)
        assert again.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
        again.close()
