"""GeoJSON for QuPath: the keys and value types QuPath's GsonTools/PathObjectTypeAdapters read."""

from __future__ import annotations

import itertools
import json
import uuid

import numpy as np
import pytest
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box, shape

from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.outputs.geojson import build_feature_collection, write_geojson
from wsi_segment.pipeline.outputs.polygon_merge import (
    merge_class_polygons,
    simplify_coverage,
)
from wsi_segment.pipeline.outputs.polygons import (
    label_block_polygons,
    to_level0,
)

NAMES = ["TE", "NEC", "LYM", "TAS"]
COLORS = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)]


def _collection(**kwargs):
    ring = Polygon(box(0, 0, 100, 100).exterior, [box(40, 40, 60, 60).exterior.coords])
    geoms = {
        0: MultiPolygon([ring]),
        1: MultiPolygon([box(40, 40, 60, 60), box(100, 0, 110.12345, 10)]),
        3: MultiPolygon(),
    }
    measurements = {
        "TE": {"area_um2": 2400.5, "mean_probability": 0.8},
        "NEC": {"area_um2": 501.0, "mean_probability": float("nan")},
        "Tissue": {"area_um2": 3000.0},
    }
    return build_feature_collection(
        geoms, NAMES, COLORS, measurements, box(0, 0, 120, 100), **kwargs
    )


def test_schema_matches_qupath(tmp_path):
    path = write_geojson(tmp_path / "tissue.geojson", _collection(id_prefix="slide-1"))
    fc = json.loads(path.read_text(encoding="utf-8"))
    assert fc["type"] == "FeatureCollection"
    names = [f["properties"]["classification"]["name"] for f in fc["features"]]
    assert names == ["Tissue", "TE", "NEC"]  # empty classes left out
    for f in fc["features"]:
        assert f["type"] == "Feature"
        uuid.UUID(f["id"])  # QuPath keeps the id only if it parses as a UUID
        props = f["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert set(cls) == {"name", "color"}  # QuPath needs both to read the object form
        assert isinstance(cls["name"], str)
        assert len(cls["color"]) == 3 and all(isinstance(c, int) for c in cls["color"])
        assert all(isinstance(v, float) and v == v for v in props.get("measurements", {}).values())
        geom = shape(f["geometry"])
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon") and geom.is_valid
    te, nec = fc["features"][1], fc["features"][2]
    assert te["properties"]["classification"]["color"] == [205, 51, 51]
    assert te["properties"]["measurements"] == {"area_um2": 2400.5, "mean_probability": 0.8}
    assert nec["properties"]["measurements"] == {"area_um2": 501.0}  # NaN left out
    assert te["geometry"]["type"] == "Polygon"
    assert len(te["geometry"]["coordinates"]) == 2  # shell + hole kept
    assert nec["geometry"]["type"] == "MultiPolygon"
    assert [110.123, 0.0] in nec["geometry"]["coordinates"][1][0]  # rounded to 3 decimals
    assert shape(te["geometry"]).area == 100 * 100 - 20 * 20


def test_ids_are_reproducible_with_a_prefix():
    a, b = _collection(id_prefix="s"), _collection(id_prefix="s")
    assert [f["id"] for f in a["features"]] == [f["id"] for f in b["features"]]
    c = _collection()
    assert len({f["id"] for f in c["features"]} | {f["id"] for f in a["features"]}) == 6


def test_written_file_is_strict_json(tmp_path):
    fc = _collection(decimals=None)
    path = write_geojson(tmp_path / "t.geojson", fc)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text
    assert json.loads(text) == fc
    assert not list(tmp_path.glob(".*"))  # temp file renamed away


def test_no_tissue_and_errors():
    fc = build_feature_collection({0: box(0, 0, 1, 1)}, ["A"], [(1, 2, 3)], {}, None)
    assert [f["properties"]["name"] for f in fc["features"]] == ["A"]
    with pytest.raises(ConfigError):
        build_feature_collection({0: box(0, 0, 1, 1)}, ["A"], [(1, 2, 300)], {}, None)
    with pytest.raises(ConfigError):
        build_feature_collection({}, ["A", "B"], [(1, 2, 3)], {}, None)
    with pytest.raises(ConfigError):
        build_feature_collection(
            {0: shapely.LineString([(0, 0), (1, 1)])}, ["A"], [(1, 2, 3)], {}, None
        )


def test_label_raster_to_qupath_file_stays_valid(tmp_path):
    """Whole chain: blocks -> merge -> coverage simplify -> level 0 (non-integer scale, QuPath
    offset) -> rounded JSON -> parsed back: every geometry valid, classes still disjoint."""
    rng = np.random.default_rng(7)
    labels = ndimage.gaussian_filter(rng.normal(size=(4, 96, 128)), (0, 3, 3)).argmax(0)
    labels = labels.astype(np.uint8)
    labels[ndimage.gaussian_filter(rng.normal(size=(96, 128)), 5) > 0.05] = 255
    blocks = [
        label_block_polygons(labels[y : y + 32, x : x + 32], x, y, 4)
        for y in range(0, 96, 32)
        for x in range(0, 128, 32)
    ]
    simple = simplify_coverage(merge_class_polygons(blocks), tolerance=1.0)
    level0 = {c: to_level0(g, 7.9713, (-1234, -77)) for c, g in simple.items()}
    fc = build_feature_collection(level0, NAMES, COLORS, {}, None, id_prefix="s")
    data = json.loads(write_geojson(tmp_path / "t.geojson", fc).read_text())
    geoms = [shape(f["geometry"]) for f in data["features"]]
    assert len(geoms) == 4 and all(g.is_valid for g in geoms)
    for a, b in itertools.combinations(geoms, 2):
        assert a.intersection(b).area < 1e-3 * 7.9713**2
    total = sum(g.area for g in geoms) / 7.9713**2
    assert abs(total - (labels != 255).sum()) < 0.02 * (labels != 255).sum()
