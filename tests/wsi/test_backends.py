"""The read backends' registry (`wsi.backends.BACKENDS`) is all a new backend takes: the
`--backend` choices of `segment`, `batch` and `info`, the parameters' check and
`open_slide`'s order and URL routing read it, so one registered entry appears everywhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import ConfigError
from wsi_segment.flows.cli import build_parser
from wsi_segment.flows.cli_segment import params_from_args
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.backends import BACKENDS, TiffSlideBackend, backend_choices, url_backends
from wsi_segment.wsi.slide import open_slide


class LocalTiffBackend(TiffSlideBackend):
    """A trivial extra backend: tiffslide under another name, local files only."""

    name = "local-tiff"
    reads_urls = False


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(BACKENDS, LocalTiffBackend.name, LocalTiffBackend)
    return LocalTiffBackend.name


def test_the_registry_names_each_backend_once_in_auto_order() -> None:
    assert list(BACKENDS) == ["openslide", "tiffslide"]
    assert all(name == backend.name for name, backend in BACKENDS.items())
    assert backend_choices() == ("auto", "openslide", "tiffslide")
    assert url_backends() == ("tiffslide",)


def test_a_registered_backend_is_a_choice_of_every_door(registered: str) -> None:
    assert backend_choices() == ("auto", "openslide", "tiffslide", registered)
    assert SegmentParams(backend=registered).backend == registered
    parser = build_parser()
    for command in (["segment", "s.svs"], ["batch", "slides/"], ["info", "s.svs"]):
        args = parser.parse_args([*command, "--backend", registered])
        assert args.backend == registered
    args = parser.parse_args(["segment", "s.svs", "--backend", registered])
    assert params_from_args(args).backend == registered


def test_a_registered_backend_opens_slides_and_is_refused_for_urls(registered: str) -> None:
    with open_slide(CMU_SLIDE, backend=registered) as slide:
        assert slide.backend == registered
        assert slide.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)
    with pytest.raises(
        ConfigError, match=f"{registered} reads local files only; use --backend tiffslide"
    ):
        open_slide("s3://bucket/slide.svs", backend=registered)
    assert url_backends() == ("tiffslide",)


@pytest.fixture
def registered_first() -> Iterator[str]:
    """The extra backend at the head of the registry (restored after)."""
    before = dict(BACKENDS)
    BACKENDS.clear()
    BACKENDS.update({LocalTiffBackend.name: LocalTiffBackend, **before})
    try:
        yield LocalTiffBackend.name
    finally:
        BACKENDS.clear()
        BACKENDS.update(before)


def test_auto_tries_the_registry_in_its_order(registered_first: str) -> None:
    with open_slide(CMU_SLIDE) as slide:
        assert slide.backend == registered_first
    with open_slide(CMU_SLIDE, backend="openslide") as slide:
        assert slide.backend == "openslide"


def test_unknown_and_local_only_backends_are_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"use auto, openslide or tiffslide$"):
        open_slide(CMU_SLIDE, backend="bioformats")
    with pytest.raises(ConfigError, match=r"choose one of auto, openslide, tiffslide$"):
        SegmentParams(backend="bioformats")
    with pytest.raises(
        ConfigError, match=r"openslide reads local files only; use --backend tiffslide$"
    ):
        open_slide("s3://bucket/slide.svs", backend="openslide")
