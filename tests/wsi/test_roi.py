"""wsi_segment.wsi.roi: QuPath GeoJSON regions read into slide coordinates, bad files refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from wsi_segment.errors import ConfigError
from wsi_segment.wsi.roi import read_rois, restrict_to_rois, roi_mask
from wsi_segment.wsi.tissue import TissueMask


def qupath_feature(coords, name=None, cls=None, kind="Polygon"):
    props = {"objectType": "annotation"}
    if name:
        props["name"] = name
    if cls:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coords},
        "properties": props,
    }


def square(x0, y0, s):
    return [[[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s], [x0, y0]]]


def write(tmp_path, doc, name="rois.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_collection_list_and_single_feature(tmp_path):
    fc = {
        "type": "FeatureCollection",
        "features": [
            qupath_feature(square(0, 0, 100), name="tumour A"),
            qupath_feature(
                [square(200, 0, 50), square(300, 0, 50)], cls="Stroma", kind="MultiPolygon"
            ),
            qupath_feature(square(0, 200, 10)),
        ],
    }
    rois = read_rois(write(tmp_path, fc))
    assert [r.name for r in rois] == ["tumour A", "Stroma", "ROI 3"]
    assert [r.geometry.area for r in rois] == [10_000, 5_000, 100]
    # QuPath also writes a bare list of features, or one feature
    assert len(read_rois(write(tmp_path, fc["features"], "list.geojson"))) == 3
    assert len(read_rois(write(tmp_path, fc["features"][0], "one.geojson"))) == 1


def test_bounds_offset_moves_regions_into_slide_pixels(tmp_path):
    """QuPath shows the bounded region of an MRXS: its (0, 0) is slide (bounds-x, bounds-y)."""
    rois = read_rois(write(tmp_path, qupath_feature(square(10, 20, 5))), (1000, 2000))
    assert rois[0].geometry.bounds == (1010, 2020, 1015, 2025)


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not a readable GeoJSON"),
        (json.dumps({"type": "Topology"}), "expected a GeoJSON"),
        (json.dumps(qupath_feature([5, 5], kind="Point")), "feature 1 is a Point"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "no region"),
        (json.dumps(qupath_feature([[[0, 0], [1]]])), "bad coordinates"),
    ],
)
def test_bad_files_name_the_file_and_the_fix(tmp_path, content, words):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        read_rois(path)
    assert str(path) in str(err.value) and words in str(err.value)
    with pytest.raises(ConfigError, match="ROI file not found"):
        read_rois(tmp_path / "missing.geojson")


def test_restrict_cuts_mask_and_polygons(tmp_path):
    """Tissue on the left half of a 400 x 200 px slide (mask at downsample 2), a region
    over the middle: what is left is their intersection, in the mask and the polygons."""
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True
    tissue = TissueMask(mask, 2.0, shapely.MultiPolygon([shapely.box(0, 0, 200, 200)]), 0.5)
    rois = read_rois(write(tmp_path, qupath_feature(square(100, 50, 200))))
    assert roi_mask(rois, (100, 200), 2.0).sum() == 100 * 75  # mask px: x 50-150, y 25-100
    cut = restrict_to_rois(tissue, rois, (400, 200))
    assert cut.mask.sum() == 50 * 75  # mask px: x 50-100, y 25-100
    assert cut.polygons.equals(shapely.box(100, 50, 200, 200))
    assert cut.fraction == pytest.approx(cut.mask.mean()) and cut.status == "ok"
    away = read_rois(write(tmp_path, qupath_feature(square(300, 0, 50)), "away.geojson"))
    assert restrict_to_rois(tissue, away, (400, 200)).status == "none"
