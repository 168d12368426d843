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
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PIL import Image


class RegionSource(Protocol):
    """What this module needs from a slide (wsi.slide.Slide satisfies it)."""

    @property
    def level_downsamples(self) -> tuple[float, ...]: ...

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


def same_pixels(level0_per_model: float, downsample: float) -> bool:
    """Model pixels are exactly the level's pixels: read them without resampling."""
    return abs(level0_per_model - downsample) < 1e-9 and float(downsample).is_integer()


LevelReader = Callable[[int, int, int, int], np.ndarray]  # (lx, ly, w, h) -> RGB level px


def level_read_box(
    box_model: tuple[int, int, int, int], level0_per_model: float, downsample: float
) -> tuple[int, int, int, int]:
    """The level-pixel box (x0, y0, x1, y1) `read_model_box` reads for a model-space box:
    the box itself when model and level pixels coincide, else scaled plus the filter margin."""
    x0, y0, x1, y1 = box_model
    ds = float(downsample)
    if same_pixels(level0_per_model, ds):
        return int(x0), int(y0), int(x1), int(y1)
    scale = level0_per_model / ds  # level pixels per model pixel (>= 1 by level choice)
    margin = math.ceil(scale) + 2  # filter support of an antialiased bilinear reduction
    return (
        math.floor(x0 * scale) - margin,
        math.floor(y0 * scale) - margin,
        math.ceil(x1 * scale) + margin,
        math.ceil(y1 * scale) + margin,
    )


def read_model_box(
    slide: RegionSource,
    box_model: tuple[int, int, int, int],
    level0_per_model: float,
    level: int | None = None,
    reader: LevelReader | None = None,
) -> np.ndarray:
    """Return the RGB uint8 image (h, w, 3) of model-space box (x0, y0, x1, y1).

    `level0_per_model` = model_mpp / slide_mpp (level-0 pixels per model pixel).
    Pixels outside the slide come back white (the slide reader guarantees it). `reader`
    replaces the direct level read (e.g. `wsi.tile_reuse.TileReuse`); same pixels.
    """
    x0, y0, x1, y1 = box_model
    width, height = x1 - x0, y1 - y0
    if level is None:
        level = choose_level(slide.level_downsamples, level0_per_model)
    ds = float(slide.level_downsamples[level])
    ix0, iy0, ix1, iy1 = level_read_box(box_model, level0_per_model, ds)
    if reader is None:

        def reader(lx: int, ly: int, w: int, h: int) -> np.ndarray:
            return _read_level(slide, level, ds, lx, ly, w, h)

    src = reader(ix0, iy0, ix1 - ix0, iy1 - iy0)
    if same_pixels(level0_per_model, ds):
        return src  # exact integer correspondence: model pixels are level pixels
    scale = level0_per_model / ds
    sx0, sy0 = x0 * scale, y0 * scale
    sx1, sy1 = x1 * scale, y1 * scale
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
