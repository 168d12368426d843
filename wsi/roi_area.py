"""Whether an exported area annotation has an area, by QuPath's own rule.

QuPath (0.5, 0.6) turns a GeoJSON polygon into a ROI with its GeometryTools.geometryToROI: a
single polygon without holes that is not an axis-aligned rectangle becomes a `PolygonROI`,
whose vertices are stored as 32-bit floats; anything else (holes, several parts,
rectangles) keeps its 64-bit coordinates. A ROI is empty (its ROI.isEmpty) when it has no
points or, for an area ROI, its area is exactly 0. So a sliver of 8e-6 px^2 whose vertices
collapse onto a line once rounded to floats is an empty annotation in QuPath, and is skipped
here like any annotation without area, instead of becoming a region with no pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_coordinates(geometry: Any) -> bool:
    """Whether every vertex of the shapely `geometry` is a finite number a 32-bit float holds
    (JSON allows 1e39, Python's parser NaN and Infinity): no slide's pixel is anything else,
    and QuPath's polygon vertices are 32-bit."""
    coords = shapely.get_coordinates(geometry)
    return bool(np.isfinite(coords).all() and (np.abs(coords) <= FLOAT32_MAX).all())


def has_area(geometry: Any) -> bool:
    """True when QuPath would read the shapely `geometry` (Polygon or MultiPolygon) as a
    non-empty area ROI. Invalid geometry is made valid first, as QuPath's area of a
    self-crossing outline is that of the region it encloses."""
    if geometry.is_empty:
        return False
    if isinstance(geometry, Polygon) and not geometry.interiors and not is_jts_rectangle(geometry):
        geometry = Polygon(np.asarray(geometry.exterior.coords, dtype=np.float32))
    valid = geometry if geometry.is_valid else shapely.make_valid(geometry)
    return bool(valid.area > 0)


def is_jts_rectangle(polygon: Polygon) -> bool:
    """JTS `Polygon.isRectangle`: no holes, a ring of exactly 5 points, each on a corner of
    its envelope, each step changing x or y but not both (QuPath keeps such a polygon as a
    rectangle with 64-bit bounds)."""
    coords = np.asarray(polygon.exterior.coords)
    if polygon.interiors or len(coords) != 5:
        return False
    xs, ys = coords[:, 0], coords[:, 1]
    on_corners = np.isin(xs, (xs.min(), xs.max())).all() and np.isin(ys, (ys.min(), ys.max())).all()
    steps = np.diff(coords, axis=0) != 0
    return bool(on_corners and (steps[:, 0] != steps[:, 1]).all())
