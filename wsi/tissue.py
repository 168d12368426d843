"""Tissue detection on a thumbnail: a mask and exact level-0 polygons.

Method (simple on purpose, so its failures are predictable):
1. Thumbnail of the slide (longer side `thumb_size`, default 2048 px, or a pyramid level
   with a longer side of half that or more, read without resampling).
2. Exclude near-white glass (min RGB channel > 215), black/very dark pixels (max channel
   < 50: slide edges, black ink, out-of-focus debris) and blue/green pen ink, told apart
   from stains in optical density (OD = -log10(I / 255)): no mixture of haematoxylin, eosin
   and DAB is green-dominant, and blue ink absorbs red >= 3x more than blue, where pure
   haematoxylin, the most red-absorbing stain, stays below 2.5x even when blued (IHC
   counterstain; pale counterstain has blue and green above red, so hue alone mistakes it
   for ink). Red pen is not told apart from eosin.
3. Tissue = coloured (HSV saturation > 0.04) and either saturation above an Otsu threshold
   (clamped to [0.04, 0.15]) or mean optical density above an Otsu threshold (clamped to
   [0.05, 0.09]; glass is about 0.03), both computed over glass and stained pixels only (ink
   and dark edges would pull them up). Saturation finds pale eosin; optical density finds
   stains that mix to grey-brown (DAB with a blue counterstain).
4. Clean-up: 3x3 closing then opening; drop tissue pieces smaller than `min_area_um2`
   and fill holes smaller than `min_hole_um2` (areas converted with the slide's mpp;
   without mpp the pixel defaults in `PIXEL_DEFAULTS` apply and `TissueMask.params` says so).
5. Polygons with `rasterio.features.shapes` (exact to the mask: rasterising them back
   gives the mask), scaled to level-0 pixels and clipped to the slide.
6. Status: "fluorescence?" when half the thumbnail or more is dark (no brightfield glass),
   "none" when nothing was found, else "ok"; callers warn with `tissue_warning`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, shape

from wsi_segment.wsi.slide import Slide

log = logging.getLogger(__name__)

WHITE_MIN = 215  # min(R, G, B) above this = glass
DARK_MAX = 50  # max(R, G, B) below this = black edge / ink
PEN_MARGIN = 25  # green this much above red (and >= blue) = green pen
PEN_OD_RATIO = 3.0  # red OD >= this x blue OD (and blue above red) = blue pen
PEN_MIN_OD = 0.2  # red OD needed before the ratio is trusted (pale pixels are noisy)
SAT_CLAMP = (0.04, 0.15)
OD_CLAMP = (0.05, 0.09)  # mean optical density: glass is about 0.03
OD_RANGE = 1.0  # OD histogram range for Otsu
# optical density of each 8-bit intensity (0 read as 0.5 so black stays finite)
_OD_LUT = -np.log10(np.maximum(np.arange(256), 0.5) / 255.0).astype(np.float32)
DARK_SLIDE_FRACTION = 0.5  # thumbnail share of dark pixels that suggests fluorescence
PIXEL_DEFAULTS = {"min_area_px": 64, "min_hole_px": 16}
HIST_BINS = 256  # the thresholds' histograms
BAND_ROWS = 128  # thumbnail rows whose pixel quantities are computed at once


@dataclass
class TissueMask:
    """Tissue at thumbnail resolution plus its polygons in level-0 pixel coordinates."""

    mask: np.ndarray  # bool (h, w)
    downsample: float  # level-0 px per mask px
    polygons: MultiPolygon
    fraction: float  # tissue share of the mask's pixels
    params: dict[str, Any] = field(default_factory=dict)
    # "ok", "none" (nothing found), "fluorescence?" (dark background), "all" (not detected:
    # the whole slide is tissue); see `tissue_warning`
    status: str = "ok"


def tissue_status(fraction: float, dark_fraction: float) -> str:
    """What a detection result means: a mostly dark thumbnail is not a brightfield slide."""
    if dark_fraction >= DARK_SLIDE_FRACTION:
        return "fluorescence?"
    return "ok" if fraction > 0 else "none"


def tissue_warning(status: str) -> str | None:
    """The user-facing warning for a status (None when there is nothing to say)."""
    fix = "pass --tissue all to process the whole slide, or --roi FILE.geojson for a region"
    if status == "none":
        return f"no tissue found, so the outputs are empty; check the slide, or {fix}"
    if status == "fluorescence?":
        return (
            "dark background: this looks like a fluorescence slide, which tissue detection "
            f"(for brightfield stains) does not handle; {fix}"
        )
    return None


def whole_slide(slide: Slide, thumb_size: int = 2048) -> TissueMask:
    """`--tissue all`: the whole slide is tissue (nothing is read)."""
    w, h = slide.dimensions
    ds = max(1.0, max(w, h) / thumb_size)
    mask = np.ones((math.ceil(h / ds), math.ceil(w / ds)), bool)
    box = shapely.box(0, 0, w, h)
    return TissueMask(mask, ds, MultiPolygon([box]), 1.0, {"method": "all"}, status="all")


def otsu(hist: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold (between-class variance maximum) of a histogram of values in [0, 1]
    and its bin edges, as `np.histogram` gives them; 0.5 for no values."""
    if not hist.any():
        return 0.5
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


class TissuePixels(NamedTuple):
    """What the pixel rule found on a thumbnail."""

    mask: np.ndarray  # bool (h, w): tissue
    saturation_threshold: float
    dark_fraction: float  # share of dark pixels (max channel < DARK_MAX): `tissue_status`


@dataclass
class _Planes:
    """The per-pixel quantities of a band of thumbnail rows that the thresholds need."""

    sat: np.ndarray  # HSV saturation, float32
    od: np.ndarray  # mean optical density of the three channels, float32
    candidate: np.ndarray  # not glass, not dark, not pen ink
    counted: np.ndarray  # what the thresholds are computed over: candidates and glass
    dark: int  # dark pixels


def _planes(rgb: np.ndarray) -> _Planes:
    """The pixel quantities of `rgb` from its uint8 channel planes (elementwise max/min and
    256-entry tables: the same values as reductions over a widened copy, at a fraction of
    the cost)."""
    r, g, b = (np.ascontiguousarray(rgb[..., i], dtype=np.uint8) for i in range(3))
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    sat = np.subtract(mx, mn) / np.maximum(mx, 1).astype(np.float32)
    od_r, od_g, od_b = (np.take(_OD_LUT, c) for c in (r, g, b))
    od = (od_r + od_g + od_b) / np.float32(3)  # the mean of the three, summed in this order
    glass = mn > WHITE_MIN
    candidate = ~glass & (mx >= DARK_MAX) & ~pen_ink(r, g, b, od_r, od_b)
    dark = int(np.count_nonzero(mx < DARK_MAX))
    return _Planes(sat, od, candidate, candidate | glass, dark)


def tissue_mask_from_rgb(rgb: np.ndarray, min_area_px: float, min_hole_px: float) -> TissuePixels:
    """The pixel rule of this module on an RGB image.

    The pixel quantities are computed in bands of `BAND_ROWS` rows, their histograms summed
    (the same counts as over the whole image): a thumbnail's dozen full-size float
    temporaries cost more in fresh memory than in arithmetic, and detection is most of the
    time before the first batch."""
    h, w = rgb.shape[:2]
    sat, od = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    candidate = np.empty((h, w), bool)
    sat_hist, od_hist, dark = np.zeros(HIST_BINS, np.int64), np.zeros(HIST_BINS, np.int64), 0
    edges = np.zeros(0)
    for y in range(0, h, BAND_ROWS):
        band, rows = _planes(rgb[y : y + BAND_ROWS]), slice(y, y + BAND_ROWS)
        sat[rows], od[rows], candidate[rows] = band.sat, band.od, band.candidate
        counts, edges = _histogram(band.sat[band.counted])
        sat_hist += counts
        od_hist += _histogram(band.od[band.counted] / OD_RANGE)[0]
        dark += band.dark
    # thresholds from glass vs stained pixels only: ink and dark edges would pull them up
    sat_thr = float(np.clip(otsu(sat_hist, edges), *SAT_CLAMP))
    od_thr = float(np.clip(otsu(od_hist, edges) * OD_RANGE, *OD_CLAMP))
    # saturation finds pale eosin; optical density finds stains that mix to grey-brown
    # (DAB with blue counterstain); either must be coloured at least a little (not grey)
    mask = candidate & (sat > SAT_CLAMP[0]) & ((sat > sat_thr) | (od > od_thr))
    return TissuePixels(_cleaned(mask, min_area_px, min_hole_px), sat_thr, dark / max(1, h * w))


def _histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges of `HIST_BINS` equal bins over [0, 1]."""
    counts, edges = np.histogram(values, bins=HIST_BINS, range=(0.0, 1.0))
    return counts, edges


def _cleaned(mask: np.ndarray, min_area_px: float, min_hole_px: float) -> np.ndarray:
    """Closing + opening on an edge-replicated copy (with a constant border the opening
    erased the outermost ring of tissue that touches the image border), then the size
    filters."""
    padded = np.pad(mask, 2, mode="edge")
    closed = box3(box3(padded, dilate=True), dilate=False)
    mask = box3(box3(closed, dilate=False), dilate=True)[2:-2, 2:-2]
    mask = drop_small(mask, min_area_px)
    cleaned: np.ndarray = ~drop_small(~mask, min_hole_px, keep_border=True)
    return cleaned


def pen_ink(
    r: np.ndarray, g: np.ndarray, b: np.ndarray, od_r: np.ndarray, od_b: np.ndarray
) -> np.ndarray:
    """Blue or green marker ink from uint8 channel planes and the red and blue optical
    densities (`_OD_LUT` of r and b); see the module docstring.

    Blue: red OD >= PEN_OD_RATIO x blue OD with blue above red (the blue markers of common
    pen filters, such as (40, 80, 170) or (120, 170, 200), are 3.1x or more; haematoxylin
    2.2x, blued 2.5x; DAB and eosin lower). Green: green the brightest channel by a margin,
    which no non-negative mixture of haematoxylin, eosin and DAB gives.
    """
    blue = (b > r) & (od_r >= PEN_MIN_OD) & (od_r >= PEN_OD_RATIO * od_b)
    green = (np.subtract(g, PEN_MARGIN, dtype=np.int16) > r) & (g >= b)
    ink: np.ndarray = blue | green
    return ink


def box3(mask: np.ndarray, *, dilate: bool) -> np.ndarray:
    """3 x 3 binary dilation or erosion, pixels outside the image counted as False: what
    `scipy.ndimage.binary_dilation` / `binary_erosion` give with a 3 x 3 square, done as two
    separable passes of whole-array logic (several times cheaper on a thumbnail)."""
    out = mask
    for axis in (1, 0):
        src = out
        out = src.copy()
        head = (slice(None), slice(1, None)) if axis == 1 else (slice(1, None), slice(None))
        tail = (slice(None), slice(None, -1)) if axis == 1 else (slice(None, -1), slice(None))
        if dilate:
            out[head] |= src[tail]
            out[tail] |= src[head]
        else:
            out[head] &= src[tail]
            out[tail] &= src[head]
            edges = [0, -1]
            if axis == 1:
                out[:, edges] = False
            else:
                out[edges, :] = False
    return out


def drop_small(mask: np.ndarray, min_px: float, keep_border: bool = False) -> np.ndarray:
    """Remove 8-connected components smaller than min_px (optionally keep border ones).

    Public because the synthetic slides drop their small pieces and fill their small holes
    with it too."""
    if min_px <= 1 or not mask.any():
        return mask
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    if keep_border:  # background touching the border is not a hole
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        keep[edge] = True
    keep[0] = False
    kept: np.ndarray = np.take(keep, lab)
    return kept


def mask_to_polygons(mask: np.ndarray, downsample: float, bounds: tuple[int, int]) -> MultiPolygon:
    """Exact polygons of a boolean mask, in level-0 px, clipped to (0, 0, W, H)."""
    from rasterio import features
    from rasterio.transform import Affine

    if not mask.any():
        return MultiPolygon()
    tf = Affine.scale(downsample)
    geoms = [
        shape(g)
        for g, v in features.shapes(mask.astype(np.uint8), mask=mask, transform=tf, connectivity=8)
        if v == 1
    ]
    merged = shapely.union_all(geoms)
    merged = shapely.intersection(merged, shapely.box(0, 0, bounds[0], bounds[1]))
    polys = [
        g for g in getattr(merged, "geoms", [merged]) if isinstance(g, Polygon) and not g.is_empty
    ]
    return MultiPolygon(polys)


def thumbnail_request(level_dimensions: Sequence[tuple[int, int]], thumb_size: int) -> int:
    """The thumbnail size to ask for: a pyramid level whose longer side is between half and
    all of `thumb_size` is read as it is, rather than averaging a level up to 4x finer (16x
    the pixels to decode: most of detection's cost on a large slide); else `thumb_size`."""
    sides = [max(w, h) for w, h in level_dimensions if thumb_size // 2 <= max(w, h) <= thumb_size]
    return max(sides) if sides else thumb_size


def detect_tissue(
    slide: Slide,
    *,
    min_area_um2: float = 20_000.0,
    min_hole_um2: float = 5_000.0,
    thumb_size: int = 2048,
) -> TissueMask:
    """Find tissue on a thumbnail of `slide` (method in the module docstring)."""
    rgb, ds = slide.thumbnail(thumbnail_request(slide.level_dimensions, thumb_size))
    if slide.mpp is not None:
        px_um2 = (ds * slide.mpp[0]) * (ds * slide.mpp[1])
        min_area_px, min_hole_px = min_area_um2 / px_um2, min_hole_um2 / px_um2
        units = "um2"
    else:
        log.warning("%s: no mpp; tissue min area/hole use pixel defaults", slide.shown_path)
        min_area_px, min_hole_px = PIXEL_DEFAULTS["min_area_px"], PIXEL_DEFAULTS["min_hole_px"]
        units = "mask pixels (slide has no mpp; pixel defaults used)"
    mask, thr, dark = tissue_mask_from_rgb(rgb, min_area_px, min_hole_px)
    polygons = mask_to_polygons(mask, ds, slide.dimensions)
    return TissueMask(
        mask=mask,
        downsample=ds,
        polygons=polygons,
        fraction=float(mask.mean()),
        status=tissue_status(float(mask.mean()), dark),
        params={
            "dark_fraction": dark,
            "method": "saturation or optical density > otsu, white/dark/pen excluded, closing+opening, size filters",
            "saturation_threshold": thr,
            "min_area_um2": min_area_um2,
            "min_hole_um2": min_hole_um2,
            "min_area_px": float(min_area_px),
            "min_hole_px": float(min_hole_px),
            "units": units,
            "thumb_size": thumb_size,
        },
    )
