"""Regions of interest drawn in QuPath -> polygons in slide pixels, clipped to the slide.

`wsi.roi_file` reads the export as QuPath does and picks the regions (area annotations and
TMA cores). Their coordinates are level-0 pixels of the image QuPath shows; for slides with
`openslide.bounds-x/y` (e.g. MRXS) that image starts at the bounds, so `slide = qupath +
bounds` here. Each region is clipped to the slide: what lies off it is no region's area, and
a region wholly off it is refused (a wrong slide or a wrong file), as is a file none of whose
regions has an area.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from wsi_segment.errors import RoiError
from wsi_segment.wsi.roi_file import RegionFeature, RoiFile, read_roi_file
from wsi_segment.wsi.roi_sources import FIX
from wsi_segment.wsi.tissue import TissueMask


@dataclass(frozen=True)
class Roi:
    """One region, with what QuPath knows it by, so results can go back onto it."""

    name: str  # QuPath name, else its classification, else `ROI <n>` (n: its place in the file)
    geometry: BaseGeometry  # MultiPolygon in level-0 slide pixels, inside the slide
    qupath_id: str | None = None  # the object's UUID in QuPath (0.4+ exports)
    classification: dict[str, Any] | None = None  # {"name", "color"} as QuPath wrote it
    user_name: str | None = None  # the object's own name in QuPath (None: it had none)


def _display_name(region: RegionFeature, number: int) -> str:
    cls = region.classification["name"] if region.classification else None
    return region.name or cls or f"ROI {number}"


def _shape(path: Path, region: RegionFeature) -> BaseGeometry:
    try:
        g = shape(region.geometry)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise RoiError(
            f"{path}: object {region.index} has bad coordinates ({exc}); {FIX}"
        ) from None
    return shapely.make_valid(g) if not g.is_valid else g


def _on_slide(geometry: BaseGeometry, slide: BaseGeometry) -> list[Polygon]:
    """The polygons with area of `geometry` cut to the slide's box."""
    inside = shapely.intersection(geometry, slide)
    return [p for p in shapely.get_parts(inside) if isinstance(p, Polygon) and p.area > 0]


def slide_rois(
    roi_file: RoiFile,
    dimensions: tuple[int, int],
    bounds_offset: tuple[float, float] = (0, 0),
) -> list[Roi]:
    """The file's regions in slide pixels, each clipped to the slide's `dimensions`.

    Raises `RoiError` for a region wholly off the slide (naming it and where the slide is in
    QuPath's coordinates) or without an area.
    """
    path = roi_file.path
    slide = shapely.box(0, 0, float(dimensions[0]), float(dimensions[1]))
    dx, dy = float(bounds_offset[0]), float(bounds_offset[1])
    rois: list[Roi] = []
    for number, region in enumerate(roi_file.regions, start=1):
        name = _display_name(region, number)
        g = translate(_shape(path, region), dx, dy)
        parts = [p for p in shapely.get_parts(g) if isinstance(p, Polygon) and p.area > 0]
        if not parts:
            raise RoiError(f"{path}: region {name!r} has no area; {FIX}")
        kept = _on_slide(MultiPolygon(parts), slide)
        if not kept:
            x0, y0, x1, y1 = (round(v) for v in shapely.bounds(MultiPolygon(parts)))
            raise RoiError(
                f"{path}: region {name!r} lies wholly off the slide (its box is x {x0 - dx:g}"
                f"-{x1 - dx:g}, y {y0 - dy:g}-{y1 - dy:g} in QuPath's pixels; the slide is x "
                f"{0 - dx:g}-{dimensions[0] - dx:g}, y {0 - dy:g}-{dimensions[1] - dy:g}); export "
                "the regions from this slide's image in QuPath"
            )
        rois.append(
            Roi(
                name,
                MultiPolygon(kept),
                qupath_id=region.qupath_id,
                classification=region.classification,
                user_name=region.name,
            )
        )
    return rois


def missing_cores(
    roi_file: RoiFile,
    dimensions: tuple[int, int],
    bounds_offset: tuple[float, float] = (0, 0),
) -> list[Roi]:
    """The TMA cores QuPath marks missing, in slide pixels and clipped to the slide, for the
    reports to list (never segmented); one wholly off the slide is left out, not refused."""
    slide = shapely.box(0, 0, float(dimensions[0]), float(dimensions[1]))
    dx, dy = float(bounds_offset[0]), float(bounds_offset[1])
    cores = []
    for number, region in enumerate(roi_file.missing_cores, start=1):
        kept = _on_slide(translate(_shape(roi_file.path, region), dx, dy), slide)
        if kept:
            name = _display_name(region, number)
            cores.append(
                Roi(name, MultiPolygon(kept), region.qupath_id, region.classification, region.name)
            )
    return cores


def read_rois(
    path: str | Path,
    dimensions: tuple[int, int],
    bounds_offset: tuple[float, float] = (0, 0),
) -> list[Roi]:
    """`read_roi_file` then `slide_rois`: the regions of a QuPath export on one slide."""
    return slide_rois(read_roi_file(path), dimensions, bounds_offset)


def roi_mask(
    rois: list[Roi],
    shape_hw: tuple[int, int],
    downsample: float,
    dimensions: tuple[int, int] | None = None,
) -> np.ndarray:
    """bool mask (h, w) of mask pixels whose centre lies in a region (mask px = ds level-0
    px). With the slide's `dimensions`, a last row or column that hangs over the slide's
    edge is judged by the centre of its part on the slide, so a region covering the slide
    keeps every pixel the slide has."""
    from rasterio import features
    from rasterio.transform import Affine

    mask: np.ndarray = features.rasterize(
        [(r.geometry, 1) for r in rois],
        out_shape=shape_hw,
        transform=Affine.scale(downsample),
        fill=0,
        dtype="uint8",
    ).astype(bool)
    if dimensions is None:
        return mask
    h, w = shape_hw
    xs = (np.arange(w) + 0.5) * downsample
    ys = (np.arange(h) + 0.5) * downsample
    over_x = w > 0 and w * downsample > dimensions[0]
    over_y = h > 0 and h * downsample > dimensions[1]
    if over_x:
        xs[-1] = ((w - 1) * downsample + min(w * downsample, dimensions[0])) / 2
    if over_y:
        ys[-1] = ((h - 1) * downsample + min(h * downsample, dimensions[1])) / 2
    area = shapely.union_all([r.geometry for r in rois])
    if over_x:
        mask[:, -1] = shapely.contains_xy(area, np.full(h, xs[-1]), ys)
    if over_y:
        mask[-1, :] = shapely.contains_xy(area, xs, np.full(w, ys[-1]))
    return mask


def restrict_to_rois(
    tissue: TissueMask, rois: list[Roi], dimensions: tuple[int, int]
) -> TissueMask:
    """Tissue inside the regions only: the mask (what runs) and the polygons (what is drawn)."""
    inside = roi_mask(rois, tissue.mask.shape, tissue.downsample, dimensions)
    mask = tissue.mask & inside
    area = shapely.union_all([r.geometry for r in rois])  # already on the slide
    polygons = shapely.intersection(tissue.polygons, area)
    parts = [p for p in shapely.get_parts(polygons) if isinstance(p, Polygon) and p.area > 0]
    status = tissue.status if mask.any() or tissue.status == "fluorescence?" else "none"
    params = {**tissue.params, "roi_regions": len(rois)}
    return TissueMask(
        mask, tissue.downsample, MultiPolygon(parts), float(mask.mean()), params, status=status
    )
