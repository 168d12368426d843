"""tiffslide reads an openslide SVS's chunks with the same pixels, so `--backend auto` may
use it for chunk reads."""

from __future__ import annotations

import numpy as np

from tests.conftest import CMU_SLIDE
from tests.wsi.model_box import read_model_box
from wsi_segment.wsi.read_backend import fast_read_backend
from wsi_segment.wsi.slide import open_slide


def test_fast_read_backend_reads_the_same_pixels():
    slide = open_slide(CMU_SLIDE, backend="openslide")
    assert fast_read_backend(slide) == "tiffslide"
    fast = open_slide(CMU_SLIDE, backend="tiffslide")
    box = (100, 200, 612, 584)  # model space at 2 level-0 px per model px
    np.testing.assert_array_equal(read_model_box(fast, box, 2.0), read_model_box(slide, box, 2.0))
    assert fast_read_backend(fast) is None  # already tiffslide
    assert fast_read_backend(slide, level=99) is None  # no such level: no claim
