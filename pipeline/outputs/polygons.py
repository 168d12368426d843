"""Label raster -> per-class polygons that are exact, seamless across blocks, edge-to-edge.

Why `rasterio.features.shapes` (GDAL polygonize): its rings follow pixel edges, so the
polygons rasterise back to the label raster with 0 wrong pixels (holes kept), and polygons of
neighbouring blocks share their border exactly, so `shapely.union_all` merges them with no
seam. `cv2.findContours` traces pixel centres: shapes shrink by half a pixel and tiles leave
gaps. Simplification uses `shapely.coverage_simplify`, which moves shared edges together, so
classes stay edge-to-edge instead of opening gaps or overlapping as per-polygon simplify does.
A run simplifies a write unit's block as it is written, one cell at a time: a cell is a zarr
chunk of `wsi.tiling.STORE_TILES` x `STORE_TILES` tile cores (`simplified_block_polygons` per
cell of `chunk_summary.block_polygons`, in the writer threads, with the cell's border fixed);
the end of the run only unions the pieces (`polygon_merge`), so the slide's polygons cost
little after inference and do not depend on the chunk size.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Sequence

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from shapely.affinity import affine_transform
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.outputs.block_box import box_polygon, uniform_value
from wsi_segment.pipeline.outputs.pixel_noding import node_pixel_polygons

# Label rasters are pixel grids, never georeferenced: rasterio's NotGeoreferencedWarning (it
# fires for some blocks, seemingly depending on GDAL state) means nothing here, and a CLI run
# printed it on stderr next to its `error:` lines. One filter, narrowed to that warning.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


def tracing_session() -> contextlib.AbstractContextManager[object]:
    """One GDAL environment for tracing many blocks: without one, every
    `rasterio.features.shapes` call sets up and tears down its own (about a fifth of the
    time of tracing a tile core)."""
    env: contextlib.AbstractContextManager[object] = rasterio.Env()
    return env


def label_block_polygons(
    labels: np.ndarray, x0_out: int, y0_out: int, n_classes: int, nodata: int = 255
) -> dict[int, list[Polygon]]:
    """Polygons of each class in one block, in output-pixel coordinates of the whole map.

    `labels` is uint8 (h, w) with classes 0..n_classes-1; `nodata` (and any value >= n_classes)
    is left out. Pixel (r, c) of the block covers [x0+c, x0+c+1) x [y0+r, y0+r+1).
    """
    labels = _as_labels(labels)
    value = uniform_value(labels)
    if value is not None:  # one region, the block's box: what tracing gives, without tracing
        if value == nodata or value >= n_classes:
            return {}
        return {value: [box_polygon(x0_out, y0_out, labels.shape, noded=False)]}
    mask = (labels != nodata) & (labels < n_classes)
    if not mask.any():
        return {}
    out: dict[int, list[Polygon]] = {}
    for value, polygon in zip(*_trace(labels, x0_out, y0_out, mask), strict=True):
        out.setdefault(value, []).append(polygon)
    return out


def simplified_block_polygons(
    labels: np.ndarray, x0_out: int, y0_out: int, n_classes: int, tolerance: float
) -> dict[int, list[Polygon]]:
    """Polygons of each class in one block, simplified edge-to-edge inside the block.

    Every region of the block, the non-class area included, is one member of a coverage
    whose outer boundary (the block's box) is kept fixed with a vertex at each pixel corner:
    classes and tissue outlines inside the block are simplified, while the pieces of
    neighbouring blocks still share identical vertices on their common border, so the
    slide's classes merge with no seam (`merge_simplified_polygons`). Values >= n_classes
    (NODATA) are left out of the result. `tolerance` > 0, as in `simplify_coverage`.
    """
    labels = _as_labels(labels)
    value = uniform_value(labels)
    if value is not None:  # the box alone, its border kept: nothing to simplify
        if value >= n_classes:
            return {}
        return {value: [box_polygon(x0_out, y0_out, labels.shape, noded=True)]}
    if not (labels < n_classes).any():
        return {}
    values, polygons = _trace(labels, x0_out, y0_out, None)
    h, w = labels.shape
    noded = node_pixel_polygons(list(polygons), (x0_out, y0_out, x0_out + w, y0_out + h))
    simplified = _simplify_keeping_areas(np.array(values), polygons, noded, n_classes, tolerance)
    out: dict[int, list[Polygon]] = {}
    for value, polygon in zip(values, simplified, strict=True):
        if value < n_classes and not polygon.is_empty:
            out.setdefault(value, []).append(polygon)
    return out


# Simplification may change a class's area in a block by at most this share of it, so each
# class's polygons stay within 1 % of its raster area over the slide (a sum of blocks), with
# room for the clip at the slide's edge.
AREA_CHANGE_LIMIT = 0.005
# Rounds of "keep the polygons that moved a class's area most as traced, simplify the others
# again" before a block is kept as traced (one or two settle it in practice).
_AREA_ROUNDS = 4


def _simplify_keeping_areas(
    values: np.ndarray,
    exact: np.ndarray,
    noded: list[BaseGeometry],
    n_classes: int,
    tolerance: float,
    min_area: float = 1.0,
) -> list[BaseGeometry]:
    """`coverage_simplify` of the block, except the polygons that would move a class's area
    in the block by more than `AREA_CHANGE_LIMIT`, which stay as traced.

    Small and thin shapes are what simplification changes most (a 3-pixel speck becomes a
    triangle, or a part under `min_area` that the merge drops, counted here as lost); along
    a large outline, cut corners and filled ones mostly cancel. A polygon left out of the
    coverage leaves a gap whose edges are the coverage's boundary, which
    `simplify_boundary=False` keeps: its neighbours' shared edges stay as traced too, so it
    fits back exactly. The block is kept as traced when the rounds do not settle it."""
    exact_area = shapely.area(exact)
    shapes = np.array(noded, dtype=object)
    free = np.ones(len(shapes), dtype=bool)
    classes = values < n_classes
    budget = AREA_CHANGE_LIMIT * np.bincount(
        values[classes], weights=exact_area[classes], minlength=n_classes
    )
    for _ in range(_AREA_ROUNDS):
        idx = np.flatnonzero(free)
        simplified = shapely.coverage_simplify(shapes[idx], tolerance, simplify_boundary=False)
        areas = shapely.area(simplified)
        areas[areas < min_area] = 0.0  # dropped by the merge unless joined to a neighbour
        change = np.zeros(len(shapes))
        change[idx] = areas - exact_area[idx]
        change[~classes] = 0.0
        moved = np.bincount(values[classes], weights=change[classes], minlength=n_classes)
        over = np.flatnonzero(np.abs(moved) > budget)
        if not len(over):
            shapes[idx] = simplified
            return list(shapes)
        for c in over:
            free[_largest_movers(values, change, int(c), moved[c], budget[c])] = False
    return noded


def _largest_movers(
    values: np.ndarray, change: np.ndarray, cls: int, moved: float, budget: float
) -> np.ndarray:
    """Indices of class `cls`'s polygons that moved its area the way it went too far, most
    first, as many as bring it back within `budget`."""
    sign = 1.0 if moved > 0 else -1.0
    mine = np.flatnonzero((values == cls) & (change * sign > 0))
    order = mine[np.argsort(-np.abs(change[mine]), kind="stable")]
    excess = abs(moved) - budget
    cut = int(np.searchsorted(np.cumsum(np.abs(change[order])), excess)) + 1
    return order[:cut]


def _as_labels(labels: np.ndarray) -> np.ndarray:
    if labels.ndim != 2:
        raise ConfigError(f"labels must be 2-D (h, w), got shape {labels.shape}")
    return np.ascontiguousarray(labels, dtype=np.uint8)


def _trace(
    labels: np.ndarray, x0_out: int, y0_out: int, mask: np.ndarray | None
) -> tuple[list[int], np.ndarray]:
    """(value, polygon) of every 4-connected region of `labels` inside `mask` (None: all)."""
    transform = Affine.translation(float(x0_out), float(y0_out))
    values: list[int] = []
    rings: list[list[tuple[float, float]]] = []
    rings_per_polygon: list[int] = []
    for geom, value in rasterio.features.shapes(
        labels, mask=mask, connectivity=4, transform=transform
    ):
        values.append(int(value))
        rings.extend(geom["coordinates"])
        rings_per_polygon.append(len(geom["coordinates"]))
    if not values:
        return [], np.empty(0, dtype=object)
    # One GEOS call builds every polygon from the rings' coordinates: the same polygons as
    # `shape(geom)` one by one (same coordinates, same WKB), without a Python object per ring.
    # (x, y) tuples flattened straight into the array: 2.3x faster than np.array on the
    # tuples, and this loop holds the GIL the other writers wait for
    ring_offsets = np.concatenate([[0], np.cumsum([len(r) for r in rings])])
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(rings))
    coords = np.fromiter(flat, dtype=np.float64, count=2 * int(ring_offsets[-1])).reshape(-1, 2)
    polygon_offsets = np.concatenate([[0], np.cumsum(rings_per_polygon)])
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords, (ring_offsets, polygon_offsets)
    )
    return values, polygons


def as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """Keep only the polygonal parts (unions can return collections) as one MultiPolygon."""
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, Polygon) and not g.is_empty]
    return MultiPolygon(parts)


def to_level0(
    geom: BaseGeometry, scale: float | tuple[float, float], offset: tuple[float, float] = (0, 0)
) -> BaseGeometry:
    """Output-pixel geometry -> level-0 pixel coordinates: `level0 = px * scale + offset`."""
    sx, sy = scale if isinstance(scale, Sequence | np.ndarray) else (scale, scale)
    return affine_transform(
        geom, [float(sx), 0.0, 0.0, float(sy), float(offset[0]), float(offset[1])]
    )


def slide_extent_level0(
    dimensions: tuple[int, int], offset: tuple[float, float] = (0, 0)
) -> Polygon:
    """The slide's level-0 rectangle in output coordinates (shifted like the polygons)."""
    w, h = float(dimensions[0]), float(dimensions[1])
    return shapely.box(offset[0], offset[1], w + offset[0], h + offset[1])


def clip_to_extent(geom: BaseGeometry, extent: Polygon) -> MultiPolygon:
    """Polygonal parts of `geom` inside the box `extent`; a geometry already inside is kept
    as is (for a box, comparing bounds decides that without a GEOS predicate)."""
    ex0, ey0, ex1, ey1 = extent.bounds
    if geom.is_empty:
        return as_multipolygon(geom)
    gx0, gy0, gx1, gy1 = geom.bounds
    if gx0 >= ex0 and gy0 >= ey0 and gx1 <= ex1 and gy1 <= ey1:
        return as_multipolygon(geom)
    return as_multipolygon(shapely.intersection(geom, extent))
