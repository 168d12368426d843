"""Polygons from label rasters: exact, seamless across blocks, edge-to-edge after simplify."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import shapely
import shapely.affinity
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box

from wsi_segment.pipeline.outputs.polygon_merge import (
    drop_collinear_vertices,
    merge_class_polygons,
    merge_simplified_polygons,
    simplify_coverage,
)
from wsi_segment.pipeline.outputs.polygons import (
    AREA_CHANGE_LIMIT,
    clip_to_extent,
    label_block_polygons,
    simplified_block_polygons,
    slide_extent_level0,
    to_level0,
)

K = 4


def _blobs(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random classes with nodata (255) areas, like a real label map."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(K, h, w)), (0, 4, 4))
    labels = noise.argmax(0).astype(np.uint8)
    background = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6) > 0.03
    labels[background] = 255
    return labels


def _rasterize(geoms: dict[int, MultiPolygon], shape: tuple[int, int]) -> np.ndarray:
    pairs = [(g, cls) for cls, g in geoms.items() if not g.is_empty]
    return rasterio.features.rasterize(pairs, out_shape=shape, fill=255, dtype=np.uint8)


def _blocks(labels: np.ndarray, size: int) -> list[dict[int, list[Polygon]]]:
    h, w = labels.shape
    return [
        label_block_polygons(labels[y : y + size, x : x + size], x, y, K)
        for y in range(0, h, size)
        for x in range(0, w, size)
    ]


def _simplified_blocks(labels: np.ndarray, size: int, tol: float) -> list[dict[int, list]]:
    h, w = labels.shape
    return [
        simplified_block_polygons(labels[y : y + size, x : x + size], x, y, K, tol)
        for y in range(0, h, size)
        for x in range(0, w, size)
    ]


def test_exact_with_holes():
    labels = np.full((12, 14), 255, dtype=np.uint8)
    labels[1:11, 1:13] = 0
    labels[4:7, 4:7] = 1  # class 1 in a hole of class 0
    labels[5, 5] = 255  # nodata in a hole of class 1
    labels[8:10, 9:12] = 2
    polys = label_block_polygons(labels, 0, 0, K)
    merged = merge_class_polygons([polys])
    assert len(merged[0].geoms) == 1
    assert len(merged[0].geoms[0].interiors) == 2
    assert len(merged[1].geoms[0].interiors) == 1
    assert merged[0].area == 120 - 9 - 6
    np.testing.assert_array_equal(_rasterize(merged, labels.shape), labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_rasterize_back_is_exact(seed):
    labels = _blobs(90, 130, seed)
    merged = merge_class_polygons([label_block_polygons(labels, 0, 0, K)])
    assert (_rasterize(merged, labels.shape) != labels).sum() == 0
    assert any(len(p.interiors) for g in merged.values() for p in g.geoms)  # holes present


def test_block_origin_offsets_coordinates():
    labels = np.zeros((2, 3), dtype=np.uint8)
    polys = label_block_polygons(labels, 100, 40, K)
    assert polys[0][0].equals(box(100, 40, 103, 42))


def test_nodata_and_out_of_range_are_left_out():
    labels = np.array([[255, 7], [1, 255]], dtype=np.uint8)
    assert set(label_block_polygons(labels, 0, 0, K)) == {1}
    assert label_block_polygons(np.full((3, 3), 255, np.uint8), 0, 0, K) == {}


@pytest.mark.parametrize("block", [16, 37, 64])
def test_blocks_merge_without_seams(block):
    labels = _blobs(100, 120, 3)
    whole = merge_class_polygons([label_block_polygons(labels, 0, 0, K)])
    merged = merge_class_polygons(_blocks(labels, block))
    assert set(whole) == set(merged)
    for cls in whole:
        assert merged[cls].equals(whole[cls])
        assert len(merged[cls].geoms) == len(whole[cls].geoms)
    assert (_rasterize(merged, labels.shape) != labels).sum() == 0


def test_class_crossing_block_border_is_one_polygon():
    labels = np.full((20, 20), 255, dtype=np.uint8)
    labels[3:17, 3:17] = 2
    labels[8:12, 8:12] = 255  # a hole straddling all four blocks
    merged = merge_class_polygons(_blocks(labels, 10))
    assert len(merged[2].geoms) == 1
    poly = merged[2].geoms[0]
    assert len(poly.interiors) == 1
    assert poly.area == 14 * 14 - 16


def test_simplified_coverage_is_valid_and_disjoint():
    labels = _blobs(120, 160, 5)
    merged = merge_class_polygons(_blocks(labels, 50))
    simple = simplify_coverage(merged, tolerance=1.5, min_area=2.0)
    assert set(simple) == set(merged)
    for g in simple.values():
        assert g.is_valid and isinstance(g, MultiPolygon)
    for a, b in itertools.combinations(simple, 2):
        assert simple[a].intersection(simple[b]).area < 1e-6
    # Edge-to-edge: still a valid coverage (no gaps opened, no overlaps) ...
    assert shapely.coverage_is_valid([g for g in simple.values() if not g.is_empty])
    # ... with far fewer vertices and nearly the same areas.
    before = sum(shapely.get_num_coordinates(g) for g in merged.values())
    after = sum(shapely.get_num_coordinates(g) for g in simple.values())
    assert after < 0.6 * before
    for cls in merged:
        assert abs(simple[cls].area - merged[cls].area) < 0.03 * merged[cls].area


def test_simplify_drops_slivers_and_keeps_empty_classes():
    big = MultiPolygon([box(0, 0, 10, 10)])
    tiny = MultiPolygon([box(10, 0, 11, 0.5)])
    out = simplify_coverage({0: big, 1: tiny, 2: MultiPolygon()}, tolerance=0, min_area=1.0)
    assert out[0].equals(big)
    assert out[1].is_empty and out[2].is_empty


def test_simplify_guard_removes_overlap():
    a = MultiPolygon([box(0, 0, 10, 10)])
    b = MultiPolygon([box(5, 0, 15, 10)])  # not a coverage: overlaps a
    out = simplify_coverage({0: a, 1: b}, tolerance=0, min_area=1.0)
    assert out[0].intersection(out[1]).area == 0
    assert out[1].equals(box(10, 0, 15, 10))


def test_to_level0():
    g = box(1, 2, 3, 5)
    assert to_level0(g, 4.0, (10, -20)).equals(box(14, -12, 22, 0))
    assert to_level0(g, (2.0, 3.0)).equals(box(2, 6, 6, 15))


def test_noding_stays_on_the_pixel_grid():
    """segmentize alone gives 7.000000000000002-like vertices at large y, which break edge
    matching between classes; the simplified coverage must still be valid."""
    top = MultiPolygon([box(0, 3977, 50, 3980)])
    bottom = MultiPolygon([box(0, 3980, 20, 3985), box(20, 3980, 50, 3990)])
    raw = shapely.segmentize([top, bottom], 1.0)
    coords = shapely.get_coordinates(raw)
    assert not np.array_equal(coords, np.rint(coords))  # the GEOS behaviour we work around
    out = simplify_coverage({0: top, 1: bottom}, tolerance=1.0)
    assert shapely.coverage_is_valid([out[0], out[1]])
    assert np.array_equal(
        shapely.get_coordinates(list(out.values())),
        np.rint(shapely.get_coordinates(list(out.values()))),
    )
    assert out[0].area == 150 and out[1].area == 100 + 300


def test_clip_to_slide_extent_keeps_coverage_inside_the_slide():
    """The last output pixel overhangs the slide edge: clipping cuts exactly at the edge."""
    labels = _blobs(37, 29, seed=3)
    merged = merge_class_polygons([label_block_polygons(labels, 0, 0, K)])
    scale = 8.016  # level-0 px per output px, not an integer (as for CMU at 0.499 um)
    extent = slide_extent_level0((230, 290), offset=(-5.0, 2.0))
    clipped = {
        c: clip_to_extent(to_level0(g, scale, (-5.0, 2.0)), extent) for c, g in merged.items()
    }
    minx, miny, maxx, maxy = extent.bounds
    for c, geom in clipped.items():
        assert geom.is_valid and geom.geom_type == "MultiPolygon"
        gx0, gy0, gx1, gy1 = geom.bounds
        assert gx0 >= minx and gy0 >= miny and gx1 <= maxx and gy1 <= maxy
        whole = to_level0(merged[c], scale, (-5.0, 2.0))
        assert geom.area == pytest.approx(whole.intersection(extent).area)
    total = shapely.union_all(list(clipped.values())).area
    assert total == pytest.approx(sum(g.area for g in clipped.values()))
    inside = MultiPolygon([box(0, 0, 3, 3)])
    assert clip_to_extent(inside, box(0, 0, 10, 10)).equals(inside)


@pytest.mark.parametrize("block", [16, 37])
def test_coverage_union_equals_general_union(block):
    """The fast coverage union of pixel polygons gives the same shapes as `union_all`."""
    labels = _blobs(90, 110, 9)
    blocks = list(_blocks(labels, block))
    merged = merge_class_polygons(blocks)
    for cls, geom in merged.items():
        general = shapely.union_all([p for b in blocks for p in b.get(cls, [])])
        assert geom.is_valid and geom.symmetric_difference(general).area == 0
    plain = simplify_coverage(merged, tolerance=0)  # collinear pixel-corner vertices dropped
    for cls, geom in plain.items():
        assert geom.equals(merged[cls])
        assert len(shapely.get_coordinates(geom)) < len(shapely.get_coordinates(merged[cls]))


LUAD_MASKS = sorted(
    (Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample").glob("*/mask/*.png")
)


@pytest.mark.parametrize("mask_path", LUAD_MASKS, ids=lambda p: p.stem)
def test_real_masks_give_the_polygons_of_shape_one_by_one(mask_path):
    """The polygons built in one call are those `shape()` builds from each traced ring (same
    WKB, so outcomes and GeoJSON do not change), and they rasterise back to the mask exactly.
    Pathologists' LUAD-HistoSeg masks (palette index 4 is background, left out as >= K)."""
    from affine import Affine
    from PIL import Image
    from shapely.geometry import shape

    labels = np.asarray(Image.open(mask_path))
    x0, y0 = 1000, 37  # offsets: coordinates are those of the whole map
    expected: dict[int, list[bytes]] = {}
    for geom, value in rasterio.features.shapes(
        labels, mask=labels < K, connectivity=4, transform=Affine.translation(x0, y0)
    ):
        expected.setdefault(int(value), []).append(shapely.to_wkb(shape(geom)))
    polys = label_block_polygons(labels, x0, y0, K, nodata=4)
    assert {c: [shapely.to_wkb(p) for p in ps] for c, ps in polys.items()} == expected
    shifted = {c: shapely.affinity.translate(MultiPolygon(ps), -x0, -y0) for c, ps in polys.items()}
    back = _rasterize(shifted, labels.shape)
    np.testing.assert_array_equal(back, np.where(labels < K, labels, 255))


# coverage_simplify's tolerance bounds the area of each removed triangle (tol^2), not a
# distance; on pixel-grid shapes that keeps every point within sqrt(2) x tol of the exact
# outline (the slide-wide simplification of the same labels reaches the same distances).
HAUSDORFF_PER_TOL = 2**0.5


@pytest.mark.parametrize(("seed", "block", "tol"), [(0, 16, 1.0), (3, 37, 1.0), (1, 50, 2.0)])
def test_blocks_simplified_alone_merge_edge_to_edge(seed, block, tol):
    """Each block simplified on its own (border fixed), then only unioned: the classes form
    a valid coverage across block borders (no gaps, no overlaps, no seams) that covers the
    exact tissue, and no class moves further from the raster than the tolerance allows."""
    labels = _blobs(120, 160, seed)
    exact = merge_class_polygons(_blocks(labels, block))
    merged = merge_simplified_polygons(_simplified_blocks(labels, block, tol), min_area=0.0)
    assert set(merged) == set(exact)
    geoms = [merged[c] for c in sorted(merged)]
    assert all(g.is_valid and isinstance(g, MultiPolygon) for g in geoms)
    assert shapely.coverage_is_valid(geoms)
    # block borders dissolved: a region never splits into pieces at a border
    for c in exact:
        assert len(merged[c].geoms) <= len(exact[c].geoms)
    tissue = shapely.union_all(list(exact.values()))
    covered = shapely.union_all(geoms)
    assert covered.area == pytest.approx(sum(g.area for g in geoms), abs=1e-6)  # no overlap
    assert shapely.hausdorff_distance(covered, tissue) <= HAUSDORFF_PER_TOL * tol
    assert covered.symmetric_difference(tissue).area < 0.03 * tissue.area
    for c in exact:
        assert shapely.hausdorff_distance(merged[c], exact[c]) <= HAUSDORFF_PER_TOL * tol
        assert abs(merged[c].area - exact[c].area) <= AREA_CHANGE_LIMIT * exact[c].area
    # vertices stay on pixel corners (a subset of the raster's), fewer of them
    coords = shapely.get_coordinates(geoms)
    assert np.array_equal(coords, np.rint(coords))
    plain = drop_collinear_vertices(merged)
    for c in merged:
        assert plain[c].equals(merged[c])
    assert sum(map(shapely.get_num_coordinates, plain.values())) < 0.6 * sum(
        map(shapely.get_num_coordinates, exact.values())
    )


def test_block_simplification_keeps_the_block_border_fixed():
    """Where a block's classes reach its border, the simplified pieces keep every pixel
    corner of the border: the neighbour's pieces meet them vertex for vertex."""
    labels = _blobs(40, 40, 2)
    pieces = simplified_block_polygons(labels, 100, 200, K, 2.0)
    exact = label_block_polygons(labels, 100, 200, K)
    border = box(100, 200, 140, 240).boundary
    for c in exact:
        on_border = MultiPolygon(exact[c]).boundary.intersection(border)
        simple = MultiPolygon(pieces[c]).boundary.intersection(border)
        assert simple.equals(on_border)
        assert shapely.get_num_coordinates(simple) >= on_border.length  # a vertex per px
    assert simplified_block_polygons(np.full((5, 5), 255, np.uint8), 0, 0, K, 1.0) == {}


def _specks(seed: int) -> np.ndarray:
    """Class 0 with 60 specks of class 1 (1 to 6 px: single pixels, pairs, squares, Ls) and
    a disc of class 2: what a small class often is on a slide (lymphocytes)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((96, 96), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    labels[(yy - 68) ** 2 + (xx - 70) ** 2 < 20**2] = 2
    shapes = [
        [(0, 0)],
        [(0, 0), (0, 1)],
        [(0, 0), (0, 1), (1, 0), (1, 1)],
        [(0, 0), (1, 0), (1, 1)],
    ]
    shapes.append([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])
    for y, x in rng.integers(1, 42, size=(60, 2)):
        for dy, dx in shapes[rng.integers(len(shapes))]:
            labels[y + dy, x + dx] = 1
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simplification_keeps_each_class_area_of_a_block(seed):
    """Specks are what simplification changes most (a 2 x 2 square becomes a triangle or a
    sliver the merge drops): their class keeps its raster area within AREA_CHANGE_LIMIT,
    the block stays a valid coverage and the large region is still simplified."""
    labels = _specks(seed)
    exact = merge_class_polygons(_blocks(labels, 96))
    merged = merge_simplified_polygons([simplified_block_polygons(labels, 0, 0, K, 1.0)])
    for c in exact:
        assert abs(merged[c].area - exact[c].area) <= AREA_CHANGE_LIMIT * exact[c].area, c
    assert shapely.coverage_is_valid([merged[c] for c in sorted(merged)])
    simple, traced = drop_collinear_vertices(merged)[2], drop_collinear_vertices(exact)[2]
    assert shapely.get_num_coordinates(simple) < 0.6 * shapely.get_num_coordinates(traced)


def _traced(labels: np.ndarray, x0: int, y0: int, tolerance: float) -> dict[int, list[bytes]]:
    """What rasterio's tracing (then noding and coverage simplification with the border kept)
    gives for a block: the reference the uniform-block shortcut must equal byte for byte."""
    transform = rasterio.Affine.translation(float(x0), float(y0))
    out: dict[int, list[bytes]] = {}
    for geom, value in rasterio.features.shapes(labels, connectivity=4, transform=transform):
        if value >= K:
            continue
        poly = shapely.geometry.shape(geom)
        if tolerance > 0:
            noded = shapely.transform(shapely.segmentize(poly, 1.0), np.rint)
            poly = shapely.coverage_simplify([noded], tolerance, simplify_boundary=False)[0]
        out.setdefault(int(value), []).append(shapely.to_wkb(poly))
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (48, 48), (17, 48)])
@pytest.mark.parametrize("value", [0, K - 1, 255])
@pytest.mark.parametrize("tolerance", [0.0, 1.0])
def test_a_block_of_one_value_gives_the_traced_polygon_byte_for_byte(shape, value, tolerance):
    """A block of one value (a tile core inside one class, or outside tissue) skips tracing:
    its box is built directly, and must be the very polygon tracing gives (same ring start,
    direction and vertices, so the GeoJSON bytes do not change)."""
    labels = np.full(shape, value, dtype=np.uint8)
    if tolerance > 0:
        got = simplified_block_polygons(labels, 96, 144, K, tolerance)
    else:
        got = label_block_polygons(labels, 96, 144, K)
    wkb = {c: [shapely.to_wkb(p) for p in ps] for c, ps in got.items()}
    assert wkb == _traced(labels, 96, 144, tolerance)
    assert (value >= K) == (wkb == {})
