"""wsi_segment.wsi.roi and roi_file: QuPath exports read as QuPath reads them, regions on the
slide, everything else counted; bad files refused with the file and the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import shapely.affinity

from tests.wsi import qupath_exports as qp
from wsi_segment.errors import ConfigError, RoiError
from wsi_segment.wsi.roi import missing_cores, read_rois, restrict_to_rois, roi_mask
from wsi_segment.wsi.roi_file import read_roi_file
from wsi_segment.wsi.tissue import TissueMask

SLIDE = (4000, 3000)  # level-0 (width, height) of the slide the regions are drawn on


def square(x0, y0, s):
    return qp.rect(x0, y0, x0 + s, y0 + s)


def test_collection_list_and_single_feature(tmp_path):
    objects = [
        qp.annotation(square(0, 0, 100), "a", name="tumour A"),
        qp.annotation(
            {
                "type": "MultiPolygon",
                "coordinates": [
                    square(200, 0, 50)["coordinates"],
                    square(300, 0, 50)["coordinates"],
                ],
            },
            "b",
            cls="Stroma",
        ),
        qp.annotation(square(0, 200, 10), "c"),
    ]
    rois = read_rois(qp.export(tmp_path / "all.geojson", objects), SLIDE)
    assert [r.name for r in rois] == ["tumour A", "Stroma", "ROI 3"]
    assert [r.geometry.area for r in rois] == [10_000, 5_000, 100]
    assert [r.user_name for r in rois] == ["tumour A", None, None]
    assert rois[1].classification == {"name": "Stroma", "color": [200, 0, 0]}
    assert [r.qupath_id for r in rois] == [o["id"] for o in objects]
    # "Export as FeatureCollection" off: a bare array, or one Feature for one object
    bare = qp.export(tmp_path / "list.geojson", objects, collection=False)
    assert json.loads(bare.read_text())[0]["type"] == "Feature"
    assert read_rois(bare, SLIDE) == rois
    one = qp.export(tmp_path / "one.geojson", objects[:1], collection=False)
    assert read_rois(one, SLIDE) == rois[:1]


def test_detections_cells_points_and_lines_are_counted_not_regions(tmp_path):
    """The export dialog's default, "All objects": one region among 2,000 cells and more."""
    objects = [qp.annotation(square(100, 100, 500), "region", cls="Tumor")]
    objects += [qp.cell(120 + i % 40 * 12, 120 + i // 40 * 9, f"c{i}") for i in range(2000)]
    objects += [qp.detection(900, 900 + 10 * i, f"d{i}") for i in range(3)]
    objects += [qp.points([(10, 10), (20, 20)], "p"), qp.points([(5, 5)], "p1")]
    objects += [qp.line([(0, 0), (50, 50), (80, 20)], "l")]
    objects += [qp.feature("tile", square(0, 0, 64), seed="t")]
    path = qp.export(tmp_path / "all_objects.geojson", objects)
    roi_file = read_roi_file(path)
    assert [r.name for r in roi_file.regions] == [None]
    assert roi_file.warning() == (
        f"{path}: skipped 2,000 cells, 3 detections, 2 point annotations, 1 line annotation, "
        "1 tile (not area annotations); 1 region used"
    )
    rois = read_rois(path, SLIDE)
    assert len(rois) == 1 and rois[0].name == "Tumor" and rois[0].geometry.area == 250_000


def test_an_export_holding_an_earlier_imports_results_gives_only_the_users_regions(tmp_path):
    """QuPath's "All objects" export of an image into which a run's tissue.geojson (or a
    --roi run's regions) was imported: those class polygons and region copies carry our
    metadata key and are results, not regions. They were used as regions (the tissue counted
    several times in cohort.csv), and the import script then kept them as the user's."""
    import shapely.geometry as geometry

    from wsi_segment.pipeline.outputs.geojson import make_feature

    mine = qp.annotation(square(100, 100, 500), "mine", name="my region")
    box = geometry.box(0, 0, 300, 300)
    results = [
        make_feature(box, "Tissue", (128, 128, 128), id_key="t"),
        make_feature(box, "TE", (200, 0, 0), id_key="te"),
        make_feature(box, "my region", (0, 0, 0), id_key="r", kind="region",
                     metadata={"wsi_segment_region_of": mine["id"]}),
    ]  # fmt: skip
    path = qp.export(tmp_path / "reexport.geojson", [mine, *results])
    roi_file = read_roi_file(path)
    assert [r.qupath_id for r in roi_file.regions] == [mine["id"]]
    assert roi_file.warning() == (
        f"{path}: skipped 3 objects of an earlier wsi-segment import (not area annotations); "
        "1 region used"
    )


def test_only_regions_give_no_warning(tmp_path):
    path = qp.export(tmp_path / "r.geojson", [qp.annotation(square(0, 0, 10), "r")])
    assert read_roi_file(path).warning() is None


def test_object_type_of_older_files(tmp_path):
    """`object_type` and `type` (older QuPath, other tools) and QuPath 0.2's class-name ids
    decide like `objectType`; a feature naming no type is an annotation, as QuPath reads it."""
    objects = [
        qp.with_type_key(qp.detection(0, 0, "d1"), "object_type"),
        qp.with_type_key(qp.cell(0, 0, "c1"), "type"),
        qp.with_type_key(qp.annotation(square(0, 0, 20), "a1"), "object_type"),
        qp.legacy_02(square(100, 0, 30), cls="Tumor"),
        {**qp.legacy_02(qp.rect(0, 0, 8, 8)), "id": "PathDetectionObject"},
        {"type": "Feature", "geometry": square(200, 0, 40), "properties": {}},
        square(300, 0, 50),  # a bare geometry: QuPath makes it an annotation
    ]
    path = qp.export(tmp_path / "old.geojson", objects, collection=False)
    roi_file = read_roi_file(path)
    areas = [shapely.geometry.shape(r.geometry).area for r in roi_file.regions]
    assert areas == [400, 900, 1600, 2500]
    assert roi_file.regions[1].classification == {"name": "Tumor", "color": [200, 0, 0]}
    assert roi_file.regions[1].qupath_id is None  # 0.2 ids are class names, not UUIDs
    assert dict(roi_file.skipped) == {"detection": 2, "cell": 1}


def test_tma_cores_are_regions_unless_missing(tmp_path):
    cores = [qp.tma_core(100, 100, 200, "A-1"), qp.tma_core(400, 100, 200, "A-2", missing=True)]
    path = qp.export(tmp_path / "tma.geojson", cores)
    rois = read_rois(path, SLIDE)
    assert [r.name for r in rois] == ["A-1"] and rois[0].qupath_id == cores[0]["id"]
    assert read_roi_file(path).warning() == (
        f"{path}: skipped 1 missing TMA core (not area annotations); 1 region used"
    )
    # the missing core is kept apart, for the reports to list: its name, id and shape
    [missing] = missing_cores(read_roi_file(path), SLIDE)
    assert (missing.name, missing.qupath_id) == ("A-2", cores[1]["id"])
    assert missing.geometry.bounds == pytest.approx((400, 100, 600, 300), abs=1e-9)
    # one off the slide is left out, not refused (nobody measures it)
    far = [cores[0], qp.tma_core(9e5, 9e5, 200, "Z-9", missing=True)]
    far_path = qp.export(tmp_path / "far.geojson", far)
    assert missing_cores(read_roi_file(far_path), SLIDE) == []


def test_no_area_annotation_is_one_error(tmp_path):
    objects = [qp.cell(0, 0, "c1"), qp.cell(20, 0, "c2"), qp.points([(5, 5)], "p")]
    path = qp.export(tmp_path / "cells.geojson", objects)
    with pytest.raises(RoiError) as err:
        read_roi_file(path)
    assert str(err.value) == (
        f"{path}: no area annotation to use as a region (it holds 2 cells, 1 point "
        "annotation); draw the regions in QuPath with the rectangle, ellipse, polygon or brush "
        "tool and export them with File > Export objects as GeoJSON"
    )
    empty = qp.export(tmp_path / "empty.geojson", [])
    with pytest.raises(RoiError, match="it holds no objects"):
        read_roi_file(empty)


def test_annotations_without_area_are_skipped_like_points(tmp_path):
    """An empty polygon (a brush area erased to nothing), one whose points coincide and one
    whose points lie on a line, among valid regions: skipped and counted, the rest used."""
    objects = [
        qp.annotation(square(0, 0, 100), "a", name="kept A"),
        qp.annotation({"type": "Polygon", "coordinates": []}, "empty"),
        qp.annotation(qp.rect(50, 50, 50, 50), "dot"),
        qp.annotation(qp.rect(10, 500, 900, 500), "flat"),
        qp.annotation({"type": "MultiPolygon", "coordinates": []}, "empty-multi"),
        qp.annotation(square(200, 0, 50), "b", name="kept B"),
        qp.points([(5, 5)], "p"),
    ]
    path = qp.export(tmp_path / "mixed.geojson", objects)
    rois = read_rois(path, SLIDE)
    assert [r.name for r in rois] == ["kept A", "kept B"]
    assert [r.geometry.area for r in rois] == [10_000, 2_500]
    assert read_roi_file(path).warning() == (
        f"{path}: skipped 4 annotations without area, 1 point annotation (not area "
        "annotations); 2 regions used"
    )
    only = qp.export(tmp_path / "only.geojson", objects[1:3])
    with pytest.raises(RoiError) as err:
        read_roi_file(only)
    assert str(err.value).startswith(
        f"{only}: no area annotation to use as a region (it holds 2 annotations without area);"
    )


SLIVER = {  # a triangle of 8e-6 px^2: its apex collapses onto the base in 32-bit floats
    "type": "Polygon",
    "coordinates": [[[1500, 1200], [2500, 1200], [2000, 1200.000000016], [1500, 1200]]],
}


def test_a_sliver_qupath_reads_as_empty_is_skipped_like_zero_area(tmp_path):
    """QuPath keeps a hole-free polygon's vertices as 32-bit floats and calls an area ROI
    empty when its area is 0: this sliver is such an annotation, skipped and counted; a
    region beside it is used."""
    assert shapely.geometry.shape(SLIVER).area == pytest.approx(8e-6, rel=1e-3)
    objects = [
        qp.annotation(SLIVER, "sliver", name="sliver"),
        qp.annotation(square(0, 0, 100), "a", name="kept"),
    ]
    path = qp.export(tmp_path / "sliver.geojson", objects)
    rois = read_rois(path, SLIDE)
    assert [r.name for r in rois] == ["kept"]
    assert read_roi_file(path).warning() == (
        f"{path}: skipped 1 annotation without area (not area annotations); 1 region used"
    )


def test_qupaths_area_rule_keeps_64_bit_coordinates_where_qupath_does():
    """A rectangle (JTS `isRectangle`) becomes QuPath's RectangleROI and a geometry of
    several parts a GeometryROI, both in 64-bit coordinates: thin ones keep their area."""
    from shapely.geometry import MultiPolygon, Polygon

    from wsi_segment.wsi.roi_area import has_area, is_jts_rectangle

    thin_rect = Polygon([(10, 500), (900, 500), (900, 500.00000001), (10, 500.00000001)])
    assert is_jts_rectangle(thin_rect) and has_area(thin_rect)
    assert not is_jts_rectangle(shapely.geometry.shape(SLIVER))
    assert not has_area(shapely.geometry.shape(SLIVER))
    slab = [(1500, 1200), (2500, 1200), (2500, 1200.00000002), (2000, 1200.00000004)]
    assert not has_area(Polygon(slab))  # hole-free, not a rectangle: 32-bit vertices
    two = MultiPolygon([Polygon(slab), shapely.affinity.translate(Polygon(slab), 0, 10)])
    assert has_area(two)  # two parts: a GeometryROI, 64-bit
    assert not has_area(Polygon()) and has_area(shapely.box(0, 0, 1, 1))


def test_zip_and_gzip_exports_read_like_the_plain_file(tmp_path):
    """QuPath's "Compression: ZIP" (a zip of one `<name>.geojson`, as `PathIO.readObjects`
    reads it) and "Compression: gzip" (`.geojson.gz`) give the plain export's regions; so
    does a zip holding a gzipped entry, which QuPath reads too."""
    objects = [qp.annotation(square(0, 0, 100), "a", name="A"), qp.cell(5, 5, "c")]
    plain = read_rois(qp.export(tmp_path / "objects.geojson", objects), SLIDE)
    zipped = qp.export(tmp_path / "objects.zip", objects)
    gz = qp.gzipped(tmp_path / "objects.geojson.gz", objects)
    assert read_rois(zipped, SLIDE) == plain
    assert read_rois(gz, SLIDE) == plain
    assert (
        read_roi_file(gz).warning() == f"{gz}: skipped 1 cell (not area annotations); 1 region used"
    )
    import zipfile

    with zipfile.ZipFile(tmp_path / "nested.zip", "w") as zf:
        zf.writestr("objects.geojson.gz", gz.read_bytes())
        zf.writestr("README.txt", "not objects")
    assert read_rois(tmp_path / "nested.zip", SLIDE) == plain


def test_bounds_offset_moves_regions_into_slide_pixels(tmp_path):
    """QuPath shows the bounded region of an MRXS: its (0, 0) is slide (bounds-x, bounds-y)."""
    path = qp.export(tmp_path / "r.geojson", [qp.annotation(square(10, 20, 5), "r")])
    rois = read_rois(path, SLIDE, (1000, 2000))
    assert rois[0].geometry.bounds == (1010, 2020, 1015, 2025)


def test_regions_are_clipped_to_the_slide(tmp_path):
    """A region partly off the slide keeps only its part on it; wholly off is an error that
    says where the region and the slide are, in QuPath's pixels."""
    objects = [qp.annotation(qp.rect(3000, 2500, 5000, 3500), "edge", name="edge")]
    rois = read_rois(qp.export(tmp_path / "edge.geojson", objects), SLIDE)
    assert rois[0].geometry.equals(shapely.box(3000, 2500, 4000, 3000))
    assert rois[0].geometry.area == 1000 * 500
    off = qp.export(tmp_path / "off.geojson", [qp.annotation(qp.rect(5000, 0, 6000, 100), "o")])
    with pytest.raises(RoiError) as err:
        read_rois(off, SLIDE)
    assert str(err.value) == (
        f"{off}: region 'ROI 1' lies wholly off the slide (its box is x 5000-6000, y 0-100 in "
        "QuPath's pixels; the slide is x 0-4000, y 0-3000); export the regions from this "
        "slide's image in QuPath"
    )
    # on a bounded slide QuPath's (0, 0) is the bounds: the slide starts at minus the bounds
    with pytest.raises(RoiError, match=r"the slide is x -1000-3000, y -500-2500"):
        read_rois(off, SLIDE, (1000, 500))


@pytest.mark.parametrize(
    "content, words",
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"type": "Topology"}).encode(), "not QuPath GeoJSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not UTF-8 text"),
        (b"\x1f\x8b\x08\x00broken", "broken gzip file"),
        (
            json.dumps(
                qp.annotation({"type": "Polygon", "coordinates": [[[0, 0], [1]]]}, "x")
            ).encode(),
            "object 1 has bad coordinates",
        ),
        # valid JSON (and Python's NaN): make_valid raised a GEOSException, a traceback
        *(
            (
                f'{{"type": "Polygon", "coordinates": [[[0, 0], [{x}, 0], [1000, 1000], [0, 0]]]}}'.encode(),
                "object 1 has coordinates that are not finite 32-bit numbers",
            )
            for x in ("1e39", "NaN", "-Infinity")
        ),
    ],
)
def test_bad_files_name_the_file_and_the_fix(tmp_path, content, words):
    path = tmp_path / "bad.geojson"
    path.write_bytes(content)
    with pytest.raises(RoiError) as err:
        read_rois(path, SLIDE)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_missing_folder_and_empty_zip_are_refused(tmp_path):
    with pytest.raises(RoiError, match="ROI file not found; check the --roi path"):
        read_roi_file(tmp_path / "missing.geojson")
    with pytest.raises(RoiError, match="is a folder"):
        read_roi_file(tmp_path)
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(RoiError, match=r"the zip holds no \.geojson entry"):
        read_roi_file(tmp_path / "other.zip")


@pytest.mark.timeout(60)
def test_a_pipe_or_a_device_is_refused_not_read(tmp_path):
    """A FIFO blocked the run forever and /dev/zero was read until memory ran out."""
    import os

    fifo = tmp_path / "fifo.geojson"
    os.mkfifo(fifo)
    device = tmp_path / "zero.geojson"
    device.symlink_to("/dev/zero")
    for path in (fifo, device):
        with pytest.raises(RoiError, match="not a regular file") as err:
            read_roi_file(path)
        assert str(err.value).startswith(f"{path}: ")


def test_restrict_cuts_mask_and_polygons(tmp_path):
    """Tissue on the left half of a 400 x 200 px slide (mask at downsample 2), a region
    over the middle: what is left is their intersection, in the mask and the polygons."""
    mask = np.zeros((100, 200), bool)
    mask[:, :100] = True
    tissue = TissueMask(mask, 2.0, shapely.MultiPolygon([shapely.box(0, 0, 200, 200)]), 0.5)
    path = qp.export(tmp_path / "mid.geojson", [qp.annotation(square(100, 50, 200), "m")])
    rois = read_rois(path, (400, 200))
    assert roi_mask(rois, (100, 200), 2.0).sum() == 100 * 75  # mask px: x 50-150, y 25-100
    cut = restrict_to_rois(tissue, rois, (400, 200))
    assert cut.mask.sum() == 50 * 75  # mask px: x 50-100, y 25-100
    assert cut.polygons.equals(shapely.box(100, 50, 200, 200))
    assert cut.fraction == pytest.approx(cut.mask.mean()) and cut.status == "ok"
    away = qp.export(tmp_path / "away.geojson", [qp.annotation(square(300, 0, 50), "w")])
    assert restrict_to_rois(tissue, read_rois(away, (400, 200)), (400, 200)).status == "none"


def test_a_region_covering_the_slide_keeps_the_mask_pixels_over_its_edge(tmp_path):
    """A 401 x 203 px slide at mask downsample 4: the last mask column and row hang over the
    slide, their centres off it. A region covering the slide keeps them (their part on the
    slide is inside it), so the run is the one without `--roi`."""
    dims = (401, 203)
    path = qp.export(tmp_path / "all.geojson", [qp.annotation(qp.rect(0, 0, *dims), "s")])
    rois = read_rois(path, dims)
    assert roi_mask(rois, (51, 101), 4.0, dims).all()
    assert not roi_mask(rois, (51, 101), 4.0)[:, -1].any()  # by centres alone: lost
    half = qp.export(tmp_path / "half.geojson", [qp.annotation(qp.rect(0, 0, 200, 203), "h")])
    kept = roi_mask(read_rois(half, dims), (51, 101), 4.0, dims)
    assert kept[:, :50].all() and not kept[:, 50:].any()
