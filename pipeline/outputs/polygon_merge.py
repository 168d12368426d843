"""The slide's class polygons from its blocks' pieces: one union per class, a guard against
classes that overlap, and the vertices nothing needs dropped.

The writer traces and simplifies each block as it is written (`polygons`); what is left at the
end of a run is slide-wide and runs here. Every step is one GEOS call per class (or per pair of
classes), and GEOS releases the GIL, so the classes run side by side (`_in_threads`): on a GPU
run this is what a user waits for after the last tile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_segment.pipeline.machine import usable_cores
from wsi_segment.pipeline.outputs.polygons import as_multipolygon

_T = TypeVar("_T")
_R = TypeVar("_R")


def merge_class_polygons(
    per_block_dicts: Iterable[Mapping[int, Sequence[Polygon]]],
) -> dict[int, MultiPolygon]:
    """Union each class's polygons over all blocks: shared block borders dissolve exactly."""
    unions = _union_per_class(per_block_dicts, _union_pixel_polygons)
    return {k: as_multipolygon(g) for k, g in unions.items()}


def _union_per_class(
    per_block_dicts: Iterable[Mapping[int, Sequence[Polygon]]],
    union: Callable[[list[Polygon]], BaseGeometry],
) -> dict[int, BaseGeometry]:
    """`union` of each class's polygons gathered over all blocks, classes in sorted order.
    One union per class; GEOS releases the GIL, so threads run the classes in parallel."""
    gathered: dict[int, list[Polygon]] = defaultdict(list)
    for block in per_block_dicts:
        for cls, polys in block.items():
            gathered[int(cls)].extend(polys)
    keys = sorted(gathered)
    return dict(zip(keys, _in_threads(lambda k: union(gathered[k]), keys), strict=True))


def _in_threads(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """`fn` of each item, in order, one thread per item up to the cores: the slide-wide GEOS
    calls (one per class or pair of classes) release the GIL, so they run side by side."""
    if len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=max(1, min(len(items), usable_cores()))) as pool:
        return list(pool.map(fn, items))


def merge_simplified_polygons(
    per_block_dicts: Iterable[Mapping[int, Sequence[Polygon]]], min_area: float = 1.0
) -> dict[int, MultiPolygon]:
    """Union each class's block-simplified pieces (`simplified_block_polygons`): a valid
    coverage, slivers (< `min_area` output px^2) dropped, overlaps guarded.

    The pieces of one class already share identical vertices along block borders, so the
    coverage union dissolves them without noding (`union_all` where that fails). Those
    border vertices stay: `drop_collinear_vertices` removes them for the output files.
    """
    unions = _union_per_class(per_block_dicts, _coverage_union)
    parts = [_drop_small(g, min_area) for g in unions.values()]
    if _classes_overlap(parts):  # guard: a repair or fallback left an overlap
        parts = _remove_overlaps(parts, min_area)
    return dict(zip(unions, parts, strict=True))


def drop_collinear_vertices(class_geoms: Mapping[int, BaseGeometry]) -> dict[int, MultiPolygon]:
    """The same shapes without vertices in the middle of straight edges (smaller files).

    Run last: classes still meet edge-to-edge, but a vertex where two classes meet a third
    is no longer shared by all three, which coverage checks (`coverage_is_valid`) require.
    """
    keys = list(class_geoms)
    plain = _in_threads(lambda k: shapely.simplify(class_geoms[k], 0.0), keys)
    return {k: as_multipolygon(g) for k, g in zip(keys, plain, strict=True)}


def _coverage_union(polys: list[Polygon]) -> BaseGeometry:
    merged = shapely.coverage_union_all(polys)
    return merged if merged.is_valid else shapely.union_all(polys)


def _union_pixel_polygons(polys: list[Polygon]) -> BaseGeometry:
    """Union of one class's block polygons.

    Pixel polygons of disjoint blocks never overlap, and once every edge has a vertex at each
    pixel corner (`_node_pixel_grid`) neighbours share identical vertices: a valid coverage,
    which GEOS's coverage union dissolves ~2.4x faster than the general `union_all` (same
    geometry, tested). Anything else, or a result that is not valid, takes `union_all`.
    """
    noded = _node_pixel_grid(polys)
    if noded is not polys:
        merged = shapely.coverage_union_all(noded)
        if merged.is_valid:
            return merged
    return shapely.union_all(polys)


def _drop_small(geom: BaseGeometry, min_area: float) -> MultiPolygon:
    """Valid polygonal parts of at least `min_area` (slivers and collapsed rings removed)."""
    geom = shapely.make_valid(geom) if not geom.is_valid else geom
    parts = [
        p
        for p in shapely.get_parts(geom)
        if isinstance(p, Polygon) and p.area >= max(min_area, 1e-9)
    ]
    return MultiPolygon(parts)


def _node_pixel_grid(geoms: list[BaseGeometry]) -> list[BaseGeometry]:
    """Put a vertex on every pixel corner along the edges of pixel-grid polygons.

    Polygons from `label_block_polygons` have integer, axis-parallel edges, so 1-px segments
    give every polygon a vertex wherever another polygon's vertex lies on its edge (as
    coverage simplification needs). `segmentize` interpolates (7.000000000000002), so the
    result is rounded back to the grid, which is exact here. Off-grid input is left as is.
    """
    coords = shapely.get_coordinates(geoms)
    if not len(coords) or not np.array_equal(coords, np.rint(coords)):
        return geoms
    return list(shapely.transform(shapely.segmentize(geoms, 1.0), np.rint))


def simplify_coverage(
    class_geoms: Mapping[int, BaseGeometry],
    tolerance: float = 1.0,
    min_area: float = 1.0,
    simplify_boundary: bool = True,
) -> dict[int, MultiPolygon]:
    """Simplify all classes together so they stay edge-to-edge; result valid, no overlaps.

    `tolerance` (output px) is roughly the square root of the largest triangle area removed;
    parts smaller than `min_area` (output px^2) are dropped. Steps: give every edge a vertex
    at each pixel corner (so where two classes meet a third, all three share the vertex, which
    coverage simplification needs), `coverage_simplify`, repair, drop slivers; if the result
    overlaps, subtract earlier classes from later ones (guard against overlap).
    """
    keys = [k for k, g in class_geoms.items() if g is not None and not g.is_empty]
    out: dict[int, MultiPolygon] = {k: MultiPolygon() for k in class_geoms}
    if not keys:
        return out
    geoms = [class_geoms[k] for k in keys]
    if tolerance > 0:
        geoms = shapely.coverage_simplify(
            _node_pixel_grid(geoms), tolerance, simplify_boundary=simplify_boundary
        )
    else:  # drop the collinear pixel-corner vertices the merge kept (same shapes)
        geoms = _in_threads(lambda g: shapely.simplify(g, 0.0), geoms)
    geoms = [_drop_small(g, min_area) for g in geoms]
    if _classes_overlap(geoms):  # guard: the simplifier or repair left an overlap
        geoms = _remove_overlaps(geoms, min_area)
    out.update(zip(keys, geoms, strict=True))
    return out


def _classes_overlap(geoms: Sequence[BaseGeometry]) -> bool:
    """Whether two of `geoms` share interior area: exactly when `_remove_overlaps` would change
    them (a point inside one class and inside the union of earlier ones is inside one of them).

    Each class is tested against the later ones from its own copy, prepared in its own thread:
    GEOS builds a prepared geometry's indexes lazily, so no prepared copy is shared by threads.
    On a slide this is about half the time of one `coverage_is_valid` over all classes, and the
    classes run side by side."""
    wkbs = [shapely.to_wkb(g) for g in geoms]

    def overlaps_a_later_class(i: int) -> bool:
        mine = shapely.from_wkb(wkbs[i])
        shapely.prepare(mine)
        later = shapely.from_wkb(wkbs[i + 1 :])
        return bool(shapely.relate_pattern(mine, later, "T********").any())

    return any(_in_threads(overlaps_a_later_class, range(len(wkbs) - 1)))


def _remove_overlaps(geoms: list[MultiPolygon], min_area: float) -> list[MultiPolygon]:
    """Subtract each earlier class from later ones, so no two classes share area."""
    result: list[MultiPolygon] = []
    taken: BaseGeometry | None = None
    for geom in geoms:
        if taken is not None and shapely.relate_pattern(geom, taken, "T********"):
            geom = _drop_small(geom.difference(taken), min_area)
        result.append(geom)
        taken = geom if taken is None else shapely.union(taken, geom)
    return result
