"""pipeline.outputs.roi_outputs: per-region areas and the features that carry them back to
the user's own QuPath objects."""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path

import pytest
import shapely

from tests.wsi import qupath_exports as qp
from wsi_segment.pipeline.outputs.geojson import METADATA_KEY
from wsi_segment.pipeline.outputs.roi_outputs import (
    REGION_OF_KEY,
    roi_class_areas,
    roi_features,
)
from wsi_segment.wsi.roi import read_rois

SCRIPT = Path(__file__).resolve().parents[3] / "docs" / "qupath" / "wsi_segment_import.groovy"


@pytest.fixture
def rois(tmp_path):
    objects = [
        qp.annotation(qp.rect(0, 0, 100, 100), "tumour", name="T1", cls="Tumor", color=(200, 0, 0)),
        qp.annotation(qp.rect(100, 0, 200, 100), "plain"),
    ]
    return read_rois(qp.export(tmp_path / "r.geojson", objects), (1000, 1000)), objects


def test_regions_keep_their_qupath_id_class_and_name(rois):
    regions, objects = rois
    report = roi_class_areas(regions, {0: shapely.box(0, 0, 150, 50)}, ["TE", "NEC"], 0.25)
    feats = roi_features(regions, report, "fingerprint-1")
    props = [f["properties"] for f in feats]
    # the user's object is named in the metadata; the feature's own id is another, so a
    # plain import never gives the image two objects with one id
    assert [p["metadata"] for p in props] == [
        {METADATA_KEY: "region", REGION_OF_KEY: objects[0]["id"]},
        {METADATA_KEY: "region", REGION_OF_KEY: objects[1]["id"]},
    ]
    ids = [str(uuid.UUID(f["id"])) for f in feats]  # as QuPath reads it
    assert len(set(ids)) == 2 and not set(ids) & {o["id"] for o in objects}
    assert [f["id"] for f in roi_features(regions, report, "fingerprint-1")] == ids
    assert not set(ids) & {f["id"] for f in roi_features(regions, report, "fingerprint-2")}
    assert [p["name"] for p in props] == ["T1", "ROI 2"]
    assert [p["classification"] for p in props] == [
        {"name": "Tumor", "color": [200, 0, 0]},
        {"name": "ROI", "color": [255, 200, 0]},
    ]
    assert props[0]["measurements"] == {
        "area_um2": 2500.0,
        "Tissue area_um2": 1250.0,
        "TE area_um2": 1250.0,
        "TE fraction_of_tissue": 1.0,
        "NEC area_um2": 0.0,
        "NEC fraction_of_tissue": 0.0,
    }
    assert [r["qupath_id"] for r in report] == [objects[0]["id"], objects[1]["id"]]
    # the region's own QuPath class, for cohort.csv's `region_class` (none: no key)
    assert [r.get("classification") for r in report] == ["Tumor", None]


def test_a_region_from_a_file_without_ids_gets_a_reproducible_one(tmp_path):
    path = qp.export(tmp_path / "old.geojson", [qp.legacy_02(qp.rect(0, 0, 10, 10))])
    regions = read_rois(path, (100, 100))
    report = roi_class_areas(regions, {}, ["TE"], 1.0)
    a, b = roi_features(regions, report, "s"), roi_features(regions, report, "s")
    assert a[0]["id"] == b[0]["id"] and "qupath_id" not in report[0]
    assert a[0]["properties"]["metadata"] == {METADATA_KEY: "region"}  # no object to name


def test_tissue_of_a_region_is_what_was_labelled_in_it(rois):
    """Classes tile the labelled pixels; a region's tissue is their sum, so no class exceeds
    it and the fractions add up to 1."""
    regions, _ = rois
    geoms = {0: shapely.box(0, 0, 130, 40), 1: shapely.box(0, 40, 130, 70)}
    report = roi_class_areas(regions, geoms, ["TE", "NEC"], 1.0)
    assert [r["tissue_area_um2"] for r in report] == [7000.0, 2100.0]
    for r in report:
        areas = [c["area_um2"] for c in r["classes"].values()]
        assert math.fsum(areas) == r["tissue_area_um2"]
        assert all(a <= r["tissue_area_um2"] for a in areas)


def test_a_region_without_tissue_has_no_shares(rois):
    """A region with nothing labelled in it: its areas are measured zeros; its classes'
    shares of no tissue are undefined: null in the report, no measurement in QuPath (they
    were 0.0). The region with tissue keeps its exact shares, the absent class's 0.0."""
    regions, _ = rois
    report = roi_class_areas(regions, {0: shapely.box(0, 0, 50, 50)}, ["TE", "NEC"], 1.0)
    assert report[1]["tissue_area_um2"] == 0.0
    assert report[1]["classes"] == {
        "TE": {"area_um2": 0.0, "fraction_of_tissue": None},
        "NEC": {"area_um2": 0.0, "fraction_of_tissue": None},
    }
    assert report[0]["classes"] == {
        "TE": {"area_um2": 2500.0, "fraction_of_tissue": 1.0},
        "NEC": {"area_um2": 0.0, "fraction_of_tissue": 0.0},
    }
    with_tissue, without = (
        f["properties"]["measurements"] for f in roi_features(regions, report, "s")
    )
    assert without == {
        "area_um2": 10000.0,
        "Tissue area_um2": 0.0,
        "TE area_um2": 0.0,
        "NEC area_um2": 0.0,
    }
    assert with_tissue["TE fraction_of_tissue"] == 1.0
    assert with_tissue["NEC fraction_of_tissue"] == 0.0


def test_the_import_script_reads_what_the_outputs_write():
    """The QuPath script matches on what roi_features and make_feature write: the metadata
    keys and kind, the file name, and the user's object ids (`getID()`)."""
    text = SCRIPT.read_text()
    assert f"getMetadata().get('{METADATA_KEY}')" in text
    assert f"getMetadata().get('{REGION_OF_KEY}')" in text
    assert f"get('{METADATA_KEY}') == 'region'" in text and "'tissue.geojson'" in text
    assert "PathIO.readObjects(" in text and "getID().toString()" in text
    # QuPath's scripting API the script relies on (0.5 and 0.6)
    for call in ("removeObjects(", "addObjects(", "fireHierarchyUpdate()", "putAll("):
        assert call in text
    # a share the run left out (a region without tissue) is removed from your object before
    # the run's measurements are put, so an earlier import's value does not stay
    remove = text.index("measurements.remove(cls + ' fraction_of_tissue')")
    assert "def suffix = ' area_um2'" in text and remove < text.index("measurements.putAll(")
    assert re.search(r"def OUT = '[^']+'", text)
