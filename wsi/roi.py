"""Regions of interest drawn in QuPath: GeoJSON annotations -> polygons in slide pixels.

QuPath exports (*File > Export objects as GeoJSON*) a FeatureCollection, a list of
Features or a single Feature, in level-0 pixel coordinates of the image it shows. For
slides with `openslide.bounds-x/y` (e.g. MRXS) that image starts at the bounds, so
`slide = qupath + bounds` here. Only Polygon and MultiPolygon geometries are regions;
points and lines are refused, so a wrong export is noticed instead of silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from wsi_segment.errors import ConfigError
from wsi_segment.wsi.tissue import TissueMask

_POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class Roi:
    """One region: its name (QuPath name, else classification, else `ROI <n>`) and area."""

    name: str
    geometry: BaseGeometry  # Polygon / MultiPolygon in level-0 slide pixels


def _features(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return [f for d in doc for f in _features(d)]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return list(doc.get("features") or [])
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    if isinstance(doc, dict) and doc.get("type") in _POLYGONAL:
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    raise ValueError("expected a GeoJSON FeatureCollection, Feature or Polygon")


def _name(props: dict[str, Any], index: int) -> str:
    cls = props.get("classification")
    cls_name = cls.get("name") if isinstance(cls, dict) else None
    return str(props.get("name") or cls_name or f"ROI {index + 1}")


def read_rois(path: str | Path, bounds_offset: tuple[float, float] = (0, 0)) -> list[Roi]:
    """The polygons of a QuPath GeoJSON file, shifted into slide coordinates.

    Raises `ConfigError` naming the file for anything that is not polygonal GeoJSON.
    """
    path = Path(path)
    fix = "export the annotations from QuPath with File > Export objects as GeoJSON"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: ROI file not found; check the --roi path") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable GeoJSON file ({exc}); {fix}") from None
    try:
        features = _features(doc)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; {fix}") from None
    rois: list[Roi] = []
    for i, feature in enumerate(features):
        geom = (feature or {}).get("geometry") if isinstance(feature, dict) else None
        kind = geom.get("type") if isinstance(geom, dict) else None
        if kind not in _POLYGONAL:
            raise ConfigError(
                f"{path}: feature {i + 1} is a {kind or 'feature without geometry'}, not an "
                f"area; draw regions (rectangle, polygon, brush) in QuPath and {fix}"
            )
        try:
            g = shape(geom)
        except Exception as exc:  # shapely raises several types for malformed coordinates
            raise ConfigError(f"{path}: feature {i + 1} has bad coordinates ({exc})") from None
        g = shapely.make_valid(g) if not g.is_valid else g
        g = translate(g, float(bounds_offset[0]), float(bounds_offset[1]))
        parts = [p for p in shapely.get_parts(g) if isinstance(p, Polygon) and p.area > 0]
        if parts:
            rois.append(Roi(_name(feature.get("properties") or {}, i), MultiPolygon(parts)))
    if not rois:
        raise ConfigError(f"{path}: no region with an area in this file; {fix}")
    return rois


def roi_mask(rois: list[Roi], shape_hw: tuple[int, int], downsample: float) -> np.ndarray:
    """bool mask (h, w) of mask pixels whose centre lies in a region (mask px = ds level-0 px)."""
    from rasterio import features
    from rasterio.transform import Affine

    mask: np.ndarray = features.rasterize(
        [(r.geometry, 1) for r in rois],
        out_shape=shape_hw,
        transform=Affine.scale(downsample),
        fill=0,
        dtype="uint8",
    ).astype(bool)
    return mask


def restrict_to_rois(
    tissue: TissueMask, rois: list[Roi], dimensions: tuple[int, int]
) -> TissueMask:
    """Tissue inside the regions only: the mask (what runs) and the polygons (what is drawn)."""
    inside = roi_mask(rois, tissue.mask.shape, tissue.downsample)
    mask = tissue.mask & inside
    area = shapely.intersection(
        shapely.union_all([r.geometry for r in rois]), shapely.box(0, 0, *dimensions)
    )
    polygons = shapely.intersection(tissue.polygons, area)
    parts = [p for p in shapely.get_parts(polygons) if isinstance(p, Polygon) and p.area > 0]
    status = tissue.status if mask.any() or tissue.status == "fluorescence?" else "none"
    params = {**tissue.params, "roi_regions": len(rois)}
    return TissueMask(
        mask, tissue.downsample, MultiPolygon(parts), float(mask.mean()), params, status=status
    )
