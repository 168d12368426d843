"""Shared fixtures for pipeline tests: small real slide regions."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def cmu_region_slide(tmp_path_factory) -> Path:
    """A 301 x 187 px crop of the real CMU slide as a tiled TIFF (open it with mpp=0.499)."""
    import tifffile

    from wsi_segment.wsi.slide import open_slide

    slide = open_slide(DATA / "CMU-1-Small-Region.svs")
    region = slide.read_region((900, 1200), 0, (301, 187))
    path = tmp_path_factory.mktemp("cmu") / "cmu_crop.tif"
    tifffile.imwrite(path, region, tile=(256, 256), compression=None)
    return path
