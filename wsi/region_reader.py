"""Read a box of the slide resampled to the model's resolution.

The box is given in *model space* (slide resampled to `model_mpp`). We read from the
coarsest pyramid level that is still at least as fine as the model, then resample with
PIL using a fractional source box computed from global coordinates. Because the mapping
depends only on global coordinates (plus a small source margin for the filter), two
overlapping boxes agree on their common pixels whatever the chunk size: stitching stays
independent of chunking.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from PIL import Image


class RegionSource(Protocol):
    """What this module needs from a slide (wsi.slide.Slide satisfies it)."""

    level_downsamples: tuple[float, ...]

    def read_region(
        self, location_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...


def choose_level(level_downsamples: tuple[float, ...], level0_per_model: float) -> int:
    """Coarsest level whose downsample does not exceed the model-space factor (never upsample
    from a coarser level than needed). A tiny tolerance absorbs rounding in slide metadata."""
    best = 0
    for level, ds in enumerate(level_downsamples):
        if ds <= level0_per_model * (1 + 1e-3) and ds >= level_downsamples[best]:
            best = level
    return best


def read_model_box(
    slide: RegionSource,
    box_model: tuple[int, int, int, int],
    level0_per_model: float,
    level: int | None = None,
) -> np.ndarray:
    """Return the RGB uint8 image (h, w, 3) of model-space box (x0, y0, x1, y1).

    `level0_per_model` = model_mpp / slide_mpp (level-0 pixels per model pixel).
    Pixels outside the slide come back white (the slide reader guarantees it).
    """
    x0, y0, x1, y1 = box_model
    width, height = x1 - x0, y1 - y0
    if level is None:
        level = choose_level(slide.level_downsamples, level0_per_model)
    ds = float(slide.level_downsamples[level])
    if abs(level0_per_model - ds) < 1e-9 and float(ds).is_integer():
        # Exact integer correspondence: model pixels are level pixels, no resampling.
        return _read_level(slide, level, ds, int(x0), int(y0), width, height)
    scale = level0_per_model / ds  # level pixels per model pixel (>= 1 by level choice)
    margin = math.ceil(scale) + 2  # filter support of an antialiased bilinear reduction
    sx0, sy0 = x0 * scale, y0 * scale
    sx1, sy1 = x1 * scale, y1 * scale
    ix0, iy0 = math.floor(sx0) - margin, math.floor(sy0) - margin
    ix1, iy1 = math.ceil(sx1) + margin, math.ceil(sy1) + margin
    src = _read_level(slide, level, ds, ix0, iy0, ix1 - ix0, iy1 - iy0)
    image = Image.fromarray(src)
    out = image.resize(
        (width, height),
        resample=Image.Resampling.BILINEAR,
        box=(sx0 - ix0, sy0 - iy0, sx1 - ix0, sy1 - iy0),
    )
    return np.asarray(out, dtype=np.uint8)


def _read_level(
    slide: RegionSource, level: int, ds: float, lx: int, ly: int, width: int, height: int
) -> np.ndarray:
    """Read (width, height) level pixels whose top-left is level pixel (lx, ly)."""
    location = (round(lx * ds), round(ly * ds))
    region = slide.read_region(location, level, (int(width), int(height)))
    if region.shape != (height, width, 3):
        raise ValueError(f"slide returned {region.shape}, expected {(height, width, 3)}")
    return region
