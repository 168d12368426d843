"""Fixtures shared by the wsi tests (tests/conftest.py has the repository-wide ones)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.wsi.slide import open_slide


@pytest.fixture(scope="module")
def cmu_pixels() -> np.ndarray:
    """The whole CMU slide read once per module by openslide: the reference pixels."""
    with open_slide(CMU_SLIDE, "openslide") as slide:
        return slide.read_region((0, 0), 0, slide.dimensions)
