"""wsi_segment.wsi.roi_stream: QuPath exports read in blocks, cells counted undecoded."""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc

import pytest

from tests.wsi import qupath_exports as qp
from wsi_segment.errors import NotStreamable, RoiError
from wsi_segment.wsi.roi_file import read_roi_file
from wsi_segment.wsi.roi_stream import stream_objects


def _mixed() -> list[dict]:
    """What "All objects" holds: regions among cells, detections, points, a TMA core."""
    return [
        qp.annotation(qp.rect(0, 0, 100, 100), "a", name="first", cls="Tumor"),
        *[qp.traced_cell(200 + 14 * i, 50, f"c{i}") for i in range(5)],
        qp.detection(900, 900, "d"),
        qp.points([(10, 10), (20, 20)], "p"),
        qp.tma_core(300, 300, 100, "A-1"),
        qp.cell(500, 500, "plain-cell"),
        qp.annotation(qp.rect(600, 0, 700, 100), "b", name="last"),
    ]


def test_a_large_all_objects_export_is_read_without_decoding_its_cells(tmp_path):
    """20,000 traced cells (39 MB of JSON, gzipped as QuPath's "Compression: gzip" writes
    it) between two regions: the regions and the count come back, and the reader's peak
    memory stays below the size of the JSON itself (decoding it whole peaks near 250 MB)."""
    row = [qp.traced_cell(100 + i * 13, 100, f"c{i}") for i in range(200)]
    objects = [qp.annotation(qp.rect(0, 0, 500, 500), "r1", name="first"), *row * 100]
    objects.append(qp.annotation(qp.rect(600, 0, 900, 500), "r2", name="last"))
    text = qp._text(objects, True).encode()
    path = tmp_path / "objects.geojson.gz"
    path.write_bytes(gzip.compress(text, compresslevel=1, mtime=0))
    tracemalloc.start()
    try:
        roi_file = read_roi_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r.name for r in roi_file.regions] == ["first", "last"]
    assert dict(roi_file.skipped) == {"cell": 20_000}
    assert len(text) > 39e6 and peak < 32e6


@pytest.mark.parametrize("collection", [True, False])
@pytest.mark.parametrize("pretty", [False, True])
def test_cells_are_counted_undecoded_in_every_form(tmp_path, collection, pretty):
    """FeatureCollection or bare array, compact or pretty-printed: each cell and detection
    comes out as its kind, never decoded; everything else as the object QuPath wrote."""
    objects = _mixed()
    path = qp.export(tmp_path / "all.geojson", objects, collection=collection, pretty=pretty)
    with open(path, "rb") as f:
        items = list(stream_objects(f))
    assert items == [
        objects[0],
        *["cell"] * 5,
        "detection",
        objects[7],
        objects[8],
        "cell",
        objects[10],
    ]
    roi_file = read_roi_file(path)
    assert [r.name for r in roi_file.regions] == ["first", "A-1", "last"]
    assert dict(roi_file.skipped) == {"cell": 6, "detection": 1, "point annotation": 1}


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_block_boundaries_do_not_change_what_is_read(tmp_path, block):
    text = qp._text(_mixed(), True).encode()
    assert list(stream_objects(io.BytesIO(text), block)) == list(stream_objects(io.BytesIO(text)))


def test_one_feature_alone_and_foreign_forms(tmp_path):
    """A lone Feature is streamed; a form QuPath does not write (a bare geometry, keys in
    another order) is NotStreamable, and read_roi_file reads it whole as before."""
    one = qp.annotation(qp.rect(0, 0, 10, 10), "one", name="alone")
    assert list(stream_objects(io.BytesIO(json.dumps(one).encode()))) == [one]
    other = {"features": [one], "type": "FeatureCollection"}
    with pytest.raises(NotStreamable):
        next(stream_objects(io.BytesIO(json.dumps(other).encode())))
    path = tmp_path / "other.geojson"
    path.write_text(json.dumps(other))
    assert [r.name for r in read_roi_file(path).regions] == ["alone"]


def test_a_cut_export_is_refused(tmp_path):
    """An export cut anywhere (a copy that stopped, a full disk) is one RoiError, also when
    the cut falls among cells that are only counted."""
    text = qp._text(_mixed(), True).encode()
    for cut in (len(text) // 3, len(text) // 2, len(text) - 2, len(text) - 1):
        path = tmp_path / f"cut{cut}.geojson"
        path.write_bytes(text[:cut])
        with pytest.raises(RoiError, match=rf"^{path}: not valid JSON \(.*\); draw the"):
            read_roi_file(path)
