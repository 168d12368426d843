"""One model-space box read as the slide path reads its tiles: the tests' way to see what a
tile of the run saw (the run itself reads many at once, `wsi.region_reader.read_model_tiles`)."""

from __future__ import annotations

import numpy as np

from wsi_segment.wsi.region_reader import (
    FINER_TOLERANCE,
    RegionSource,
    choose_level,
    read_model_tiles,
)


def read_model_box(
    slide: RegionSource, box_model: tuple[int, int, int, int], level0_per_model: float
) -> np.ndarray:
    """The RGB uint8 image (h, w, 3) of model-space box (x0, y0, x1, y1) at the level the
    run would read; `level0_per_model` = model_mpp / slide_mpp. White outside the slide."""
    level = choose_level(tuple(slide.level_downsamples), level0_per_model, FINER_TOLERANCE)
    image: np.ndarray = read_model_tiles(slide, [box_model], level0_per_model, level)[0]
    return image
