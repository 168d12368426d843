"""Traced pixel polygons get a vertex wherever another polygon's vertex lies on an edge and at
every pixel corner of the block's border: the same shapes, a valid coverage, the simplifier's
same answers as with a vertex at every pixel corner, and fewer vertices."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage
from shapely.geometry import Point, Polygon

from wsi_segment.pipeline.outputs import polygon_merge as M
from wsi_segment.pipeline.outputs import polygons as P
from wsi_segment.pipeline.outputs.pixel_noding import node_pixel_polygons

K = 4


def _labels(h: int, w: int, seed: int, smooth: float) -> np.ndarray:
    """Random classes, smooth (real tissue) or speckled (`smooth` 0), with unclassified."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(K + 1, h, w))
    if smooth:
        noise = ndimage.gaussian_filter(noise, (0, smooth, smooth))
    return noise.argmax(0).astype(np.uint8)


def _traced(labels: np.ndarray, x0: int, y0: int) -> tuple[list[int], list[Polygon]]:
    values, polygons = P._trace(labels, x0, y0, None)
    return values, list(polygons)


BLOCKS = [(48, 48, 0, 3.0), (40, 56, 1, 1.5), (33, 21, 2, 0.0), (64, 64, 3, 5.0)]
ORIGINS = [(0, 300), (7, 301), (-40, -3), (21, 303)]  # any integer origin, negative ones too


@pytest.mark.parametrize(("h", "w", "seed", "smooth"), BLOCKS)
def test_same_shapes_a_valid_coverage_and_every_junction_a_vertex(h, w, seed, smooth):
    x0, y0 = ORIGINS[seed]
    _values, traced = _traced(_labels(h, w, seed, smooth), x0, y0)
    noded = node_pixel_polygons(traced, (x0, y0, x0 + w, y0 + h))
    assert all(shapely.equals(noded, traced)) and all(shapely.is_valid(noded))
    assert shapely.coverage_is_valid(noded)
    vertices = {tuple(p) for p in shapely.get_coordinates(noded)}
    for polygon in noded:
        own = {tuple(p) for p in shapely.get_coordinates(polygon)}
        boundary = polygon.boundary
        touching = {v for v in vertices if boundary.distance(Point(v)) == 0}
        assert touching <= own  # a vertex of any polygon on this one's edge is its vertex too
    border = {(x, y) for x in range(x0, x0 + w + 1) for y in (y0, y0 + h)}
    border |= {(x, y) for y in range(y0, y0 + h + 1) for x in (x0, x0 + w)}
    assert border <= vertices  # every pixel corner of the border, for the block beside it
    assert len(vertices) < len(
        {tuple(p) for p in shapely.get_coordinates(M._node_pixel_grid(traced))}
    )


@pytest.mark.parametrize(("h", "w", "seed", "smooth"), BLOCKS)
def test_the_simplifier_gives_the_shapes_it_gives_with_every_pixel_corner(h, w, seed, smooth):
    """Coverage simplification of the block, as `simplified_block_polygons` runs it, with
    these vertices and with a vertex at every pixel corner (`segmentize`): the same polygons."""
    values, traced = _traced(_labels(h, w, seed, smooth), 0, 0)
    box = (0, 0, w, h)
    arrays = np.array(values), np.array(traced, dtype=object)
    ours = P._simplify_keeping_areas(*arrays, node_pixel_polygons(traced, box), K + 1, 1.0)
    every = P._simplify_keeping_areas(*arrays, M._node_pixel_grid(traced), K + 1, 1.0)
    assert len(ours) == len(every)
    assert all(shapely.equals(ours, every))


def test_off_grid_polygons_are_left_as_they_are():
    polygon = Polygon([(0, 0), (0.5, 0), (0.5, 1), (0, 1)])
    assert node_pixel_polygons([polygon], (0, 0, 1, 1))[0] is polygon
    assert node_pixel_polygons([], (0, 0, 1, 1)) == []
