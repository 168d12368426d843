"""Blocks of one value: their polygon is their box, built directly instead of traced (a
large share of a slide's cells lie inside one class or outside tissue)."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon


def uniform_value(labels: np.ndarray) -> int | None:
    """The one value of a block that holds only one (a tile core inside one class, or
    outside tissue: a large share of a slide's cells), else None."""
    if not labels.size:
        return None
    first = labels.flat[0]
    return int(first) if not (labels != first).any() else None


def box_polygon(x0: int, y0: int, shape: tuple[int, ...], noded: bool) -> Polygon:
    """The polygon tracing gives for a block of one value: its box, from the top-left corner
    down, along the bottom, up and back (the ring `rasterio.features.shapes` writes, same
    start and direction, so the same WKB); `noded`: with a vertex at every pixel corner, as
    `pixel_noding.node_pixel_polygons` leaves a block's border (and `coverage_simplify` keeps
    a border)."""
    h, w = int(shape[0]), int(shape[1])
    x1, y1 = x0 + w, y0 + h
    if not noded:
        corners = [(x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0)]
        return Polygon(np.array(corners, dtype=np.float64))
    ys, xs = np.arange(y0, y1 + 1), np.arange(x0, x1 + 1)
    ring = np.concatenate(
        [
            np.column_stack([np.full(h, x0), ys[:-1]]),  # left side, down
            np.column_stack([xs[:-1], np.full(w, y1)]),  # bottom, rightwards
            np.column_stack([np.full(h, x1), ys[::-1][:-1]]),  # right side, up
            np.column_stack([xs[::-1], np.full(w + 1, y0)]),  # top, back to the start
        ]
    )
    return Polygon(ring.astype(np.float64))
