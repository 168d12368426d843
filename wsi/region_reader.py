"""Read model-space pixels of the slide: boxes and tiles resampled to the model's resolution.

The box is given in *model space* (slide resampled to `model_mpp`). We read from the level
the run's plan chose once (`choose_level`: the coarsest level not coarser than the model's
pixels, or with `--read-level serving` at most 2 % coarser), then resample with
PIL using a fractional source box computed from global coordinates (`wsi.resample`: PIL's
bytes, through torch's vectorised kernel where that is exact).

A resampled box's pixels are a function of the box alone, not of the global position of
each pixel: PIL rounds the box to float32 and computes its filter weights in the box's own
coordinates, so two different boxes may disagree by 1 on the pixels they share wherever
the read scale is not whole. The slide path therefore resamples *tile by tile*
(`read_model_tiles`): each tile's pixels come from its own box on the global tile grid,
so they do not depend on the chunk, the ROI set, or which other tiles were read with it.
At a whole scale every box starts on a level pixel, the weights are the same everywhere,
and a chunk's tiles are resampled from their union in one pass with the same bytes (the
cheaper way for overlapping tiles). The two passes (rows, then columns, each rounded to
uint8) run in that order whatever the box's shape. Where model pixels are the level's
pixels nothing is resampled and boxes agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from wsi_segment.wsi.resample import resample_box


class RegionSource(Protocol):
    """What this module needs from a slide (wsi.slide.Slide satisfies it)."""

    @property
    def level_downsamples(self) -> tuple[float, ...]: ...

    def read_region(
        self, location_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...


# How much coarser than the model's pixels a read level may be under `--read-level serving`.
# Scanners' 40x is not 0.25 um/px: Aperio writes 0.2520-0.2527, so a model at 1.0 um/px is
# 3.957-3.968 level-0 px per model px and the 4x level is 0.8-1.1 % coarser; read by the
# `finer` rule, such a scan is decoded from level 0 (3,118 storage tiles for 314 model tiles
# against 239 from the 4x level: benchmarks/RESULTS.md, "The level read"). 2 % takes every
# Aperio scan with margin; Hamamatsu (0.2265) and 3DHistech (0.2430-0.2500) scans read a
# finer level either way. It is not the default: the demo model keeps only 90 % of its
# labels between the two reads of a 0.252 um/px slide (94.8 % between the 4x level and
# level 0 of an exact 0.25 one), so whether a model may read the level that serves is a
# property of the model, to be checked per model as bf16 is.
SERVING_TOLERANCE = 0.02
# rounding in slide metadata only (4.000183 for a nominal 4): never read a coarser level
FINER_TOLERANCE = 1e-3
# --read-level: finer (the default) or serving
READ_LEVEL_TOLERANCES = {"finer": FINER_TOLERANCE, "serving": SERVING_TOLERANCE}


def choose_level(
    level_downsamples: tuple[float, ...], level0_per_model: float, tolerance: float
) -> int:
    """Coarsest level whose downsample is at most `tolerance` (relative) coarser than the
    model's pixels: the resample then reduces, or upsamples by at most 1 + `tolerance`."""
    best = 0
    for level, ds in enumerate(level_downsamples):
        if ds <= level0_per_model * (1 + tolerance) and ds >= level_downsamples[best]:
            best = level
    return best


def same_pixels(level0_per_model: float, downsample: float) -> bool:
    """Model pixels are exactly the level's pixels: read them without resampling."""
    return abs(level0_per_model - downsample) < 1e-9 and float(downsample).is_integer()


LevelReader = Callable[[int, int, int, int], np.ndarray]  # (lx, ly, w, h) -> RGB level px


def level_read_box(
    box_model: tuple[int, int, int, int], level0_per_model: float, downsample: float
) -> tuple[int, int, int, int]:
    """The level-pixel box (x0, y0, x1, y1) `read_model_tiles` reads for a model-space box:
    the box itself when model and level pixels coincide, else scaled plus the filter margin."""
    x0, y0, x1, y1 = box_model
    ds = float(downsample)
    if same_pixels(level0_per_model, ds):
        return int(x0), int(y0), int(x1), int(y1)
    # level pixels per model pixel (>= 1 / (1 + tolerance) by level choice: at most a slight
    # upsample, whose bilinear support is within the margin)
    scale = level0_per_model / ds
    margin = math.ceil(scale) + 2  # filter support of an antialiased bilinear reduction
    return (
        math.floor(x0 * scale) - margin,
        math.floor(y0 * scale) - margin,
        math.ceil(x1 * scale) + margin,
        math.ceil(y1 * scale) + margin,
    )


def read_model_tiles(
    slide: RegionSource,
    boxes_model: Sequence[tuple[int, int, int, int]],
    level0_per_model: float,
    level: int,
    reader: LevelReader | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """RGB uint8 images (N, h, w, 3) of equal-sized model-space boxes, each resampled on its own.

    The level pixels of all boxes are read in one region (their bounding box), then each
    box is cut from it and resampled from exactly its own `level_read_box`: a box's pixels
    depend on the box only, whatever other boxes are read with it. `out`: where to put them.
    """
    if not boxes_model:
        raise ValueError("read_model_tiles needs at least one box")
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes_model}
    if len(sizes) != 1:
        raise ValueError(f"boxes must have one size, got {sorted(sizes)}")
    ((width, height),) = sizes
    ds = float(slide.level_downsamples[level])
    level_boxes = [level_read_box(b, level0_per_model, ds) for b in boxes_model]
    ix0, iy0, ix1, iy1 = _union_box(level_boxes)
    if reader is None:

        def reader(lx: int, ly: int, w: int, h: int) -> np.ndarray:
            return _read_level(slide, level, ds, lx, ly, w, h)

    src = reader(ix0, iy0, ix1 - ix0, iy1 - iy0)
    if out is None:
        out = np.empty((len(boxes_model), height, width, 3), dtype=np.uint8)
    scale = level0_per_model / ds
    if same_pixels(level0_per_model, ds):  # model pixels are level pixels: cut, no resampling
        for n, (bx0, by0, bx1, by1) in enumerate(level_boxes):
            out[n] = src[by0 - iy0 : by1 - iy0, bx0 - ix0 : bx1 - ix0]
    elif whole_scale(scale) and union_is_cheaper(boxes_model):
        _resample_union(src, (ix0, iy0), boxes_model, scale, out)
    else:
        for n, (box, (bx0, by0, bx1, by1)) in enumerate(zip(boxes_model, level_boxes, strict=True)):
            own = src[by0 - iy0 : by1 - iy0, bx0 - ix0 : bx1 - ix0]
            out[n] = resample_box(own, box, scale, (bx0, by0))
    return out


def whole_scale(scale: float) -> bool:
    """Level pixels per model pixel is a whole number: every box starts on a level pixel, so
    PIL's filter weights are the same for every box and a union's pixels are each box's."""
    return float(scale).is_integer()


def _union_box(boxes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The bounding box (x0, y0, x1, y1) of boxes, in whatever space they are given."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def union_is_cheaper(boxes: Sequence[tuple[int, int, int, int]]) -> bool:
    """Resampling the boxes' bounding box once costs less than each box on its own: true for
    a chunk's overlapping tiles, false for a few tiles scattered over a large box."""
    x0, y0, x1, y1 = _union_box(boxes)
    return len(boxes) > 1 and (x1 - x0) * (y1 - y0) <= sum(
        (b[2] - b[0]) * (b[3] - b[1]) for b in boxes
    )


def _resample_union(
    src: np.ndarray,
    origin: tuple[int, int],
    boxes: Sequence[tuple[int, int, int, int]],
    scale: float,
    out: np.ndarray,
) -> None:
    """At a whole scale: resample the boxes' union once and cut each box from it. PIL
    computes each output pixel from its own taps, with weights that depend on where its
    centre falls inside a level pixel; a whole scale puts it at the same place for every box,
    and the margin of `level_read_box` keeps every tap inside `src`, so each box gets exactly
    the bytes `resample_box` gives it alone (tests/wsi/test_region_reader.py)."""
    union = _union_box(boxes)
    whole = resample_box(src, union, scale, origin)
    ux0, uy0 = union[0], union[1]
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        out[n] = whole[y0 - uy0 : y1 - uy0, x0 - ux0 : x1 - ux0]


def _read_level(
    slide: RegionSource, level: int, ds: float, lx: int, ly: int, width: int, height: int
) -> np.ndarray:
    """Read (width, height) level pixels whose top-left is level pixel (lx, ly)."""
    location = (round(lx * ds), round(ly * ds))
    region = slide.read_region(location, level, (int(width), int(height)))
    if region.shape != (height, width, 3):
        raise ValueError(f"slide returned {region.shape}, expected {(height, width, 3)}")
    return region
