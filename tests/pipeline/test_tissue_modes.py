"""No tissue / fluorescence warnings, `--tissue all` and `--roi`, end to end with a real model."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import uuid

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from tests.conftest import CMU_SLIDE, LUAD_CLASSES
from tests.wsi import qupath_exports as qp
from tests.wsi.test_tissue import write_slide
from wsi_segment.errors import ConfigError, OutputError, RoiError
from wsi_segment.pipeline.batch_report import batch_rows, class_rows, markdown_table
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide


@pytest.fixture(scope="module")
def blank_slide(tmp_path_factory):
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (256, 320, 3)), 0, 255).astype(np.uint8)
    return write_slide(tmp_path_factory.mktemp("blank") / "blank.tif", glass, mpp=2.0)


@pytest.fixture(scope="module")
def dark_slide(tmp_path_factory):
    """Fluorescence-like: black background, a few bright green cells."""
    img = np.zeros((512, 640, 3), np.uint8)
    img[100:140, 200:240] = (20, 200, 40)
    return write_slide(tmp_path_factory.mktemp("dark") / "dark.tif", img, mpp=2.0)


def summary_of(result) -> dict:
    return json.loads((result.out_dir / "summary.json").read_text())


@pytest.mark.parametrize(
    "slide, status", [("blank_slide", "none"), ("dark_slide", "fluorescence?")]
)
def test_nothing_found_is_a_result_with_a_warning(request, tmp_path, tiny_model_dir, slide, status):
    result = segment_slide(
        request.getfixturevalue(slide), tmp_path, SegmentParams(model_dir=tiny_model_dir)
    )
    assert result.status == "done"
    tissue = summary_of(result)["tissue"]
    assert tissue["status"] == status and "--tissue all" in tissue["warning"]
    assert summary_of(result)["tiling"]["tiles"] == 0
    row = batch_rows([result])[0]
    assert row["tissue"] == f"{status} !"


def test_a_slide_without_tissue_has_no_shares_or_means(tmp_path, tiny_model_dir, blank_slide):
    """Nothing labelled: areas are measured zeros, but a class's share of no tissue, its
    mean probability over no pixels and the bytes per tile of no tile are undefined: null
    (they were 0.0), an empty cell in the batch and slide tables; no class or Tissue
    feature in the GeoJSON carries a number."""
    result = segment_slide(blank_slide, tmp_path, SegmentParams(model_dir=tiny_model_dir))
    summary = summary_of(result)
    undefined = {"area_um2": 0.0, "fraction_of_tissue": None, "mean_probability": None}
    assert summary["classes"] == dict.fromkeys([*LUAD_CLASSES, "Unclassified"], undefined)
    assert summary["tissue"]["area_um2"] == 0.0
    assert summary["run_stats"]["tiles_run"] == 0
    assert summary["run_stats"]["bytes_from_model_per_tile"] is None
    row = batch_rows([result])[0]
    assert [row[f"{c} %"] for c in [*LUAD_CLASSES, "Unclassified"]] == [None] * 5
    # the slide's Prefect table (flows/slide_flow.py): empty cells, never 0.0
    rows = class_rows(summary)
    assert [(r["area_mm2"], r["percent_of_tissue"], r["mean_probability"]) for r in rows] == [
        (0.0, None, None)
    ] * 5
    assert markdown_table(rows).splitlines()[2] == "| TE | 0.0 |  |  |"
    fc = json.loads((result.out_dir / "tissue.geojson").read_text())
    assert fc["features"] == []


def test_cli_warns_on_stderr_and_exits_0(tmp_path, tiny_model_dir, blank_slide):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsi_segment.flows.cli",
            str(blank_slide),
            "--quiet",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {blank_slide}: no tissue found")
    assert "done" in run.stdout


def test_tissue_all_runs_the_whole_slide(tmp_path, tiny_model_dir, blank_slide):
    params = SegmentParams(model_dir=tiny_model_dir, tissue="all")
    result = segment_slide(blank_slide, tmp_path, params)
    summary = summary_of(result)
    assert summary["tissue"]["status"] == "all" and summary["tissue"]["warning"] is None
    # 320 x 256 px at 2 um/px = model px (tile 64, overlap 32: stride 32) -> 10 x 8 tiles
    assert summary["tiling"]["tiles"] == 10 * 8
    labelled = sum(c["area_um2"] for c in summary["classes"].values())
    assert labelled == pytest.approx(320 * 256 * 4.0)  # every pixel labelled
    assert summary["tissue"]["area_um2"] == pytest.approx(320 * 256 * 4.0)
    # a different run than auto: the fingerprint says so
    with pytest.raises(OutputError, match="different run"):
        segment_slide(blank_slide, tmp_path, SegmentParams(model_dir=tiny_model_dir))


def qupath_rois(path):
    """Two rectangles drawn in QuPath over CMU tissue, exported with "All objects": one
    named, one classified, and cells and a point annotation that are not regions."""
    objects = [
        qp.annotation(qp.rect(700, 900, 1500, 1700), "upper", name="upper"),
        qp.annotation(qp.rect(300, 2200, 1300, 2900), "lower", cls="Region*", color=(0, 0, 180)),
        qp.cell(800, 1000, "cell-1"),
        qp.cell(820, 1000, "cell-2"),
        qp.points([(900, 1100)], "point"),
    ]
    return qp.export(path, objects), objects


@pytest.fixture(scope="module")
def roi_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("roi")
    roi, _ = qupath_rois(tmp / "cmu.geojson")
    params = SegmentParams(model_dir=tiny_model_dir, roi=roi)
    return segment_slide(CMU_SLIDE, tmp / "out", params), roi


def test_roi_clips_outputs_and_reports_per_region(roi_run):
    result, roi = roi_run
    summary = summary_of(result)
    fc = json.loads((result.out_dir / "tissue.geojson").read_text())
    regions = shapely.union_all(
        [shapely.box(700, 900, 1500, 1700), shapely.box(300, 2200, 1300, 2900)]
    )
    by_class = {}
    for f in fc["features"]:
        by_class.setdefault(f["properties"]["classification"]["name"], []).append(f)
    # every class polygon and the tissue outline lie inside the regions
    for name in [*LUAD_CLASSES, "Tissue"]:
        for f in by_class.get(name, []):
            assert shape(f["geometry"]).difference(regions).area < 1e-6
    # each region comes back naming its QuPath object, with its name and class ("ROI" when
    # it had none)
    _, objects = qupath_rois(result.out_dir.parent.parent / "again.geojson")
    rois = [f for f in fc["features"] if f["properties"]["metadata"]["wsi_segment"] == "region"]
    assert [f["properties"]["metadata"]["wsi_segment_region_of"] for f in rois] == [
        objects[0]["id"],
        objects[1]["id"],
    ]
    assert [f["properties"]["name"] for f in rois] == ["upper", "Region*"]
    assert [f["properties"]["classification"] for f in rois] == [
        {"name": "ROI", "color": [255, 200, 0]},
        {"name": "Region*", "color": [0, 0, 180]},
    ]
    assert len(by_class["ROI"]) == 1 and len(by_class["Region*"]) == 1  # no cell came back
    report = summary["rois"]
    assert [r["name"] for r in report] == ["upper", "Region*"]
    assert [r["qupath_id"] for r in report] == [objects[0]["id"], objects[1]["id"]]
    um2 = 0.499 * 0.499
    assert report[0]["area_um2"] == pytest.approx(800 * 800 * um2)
    for f, r in zip(rois, report, strict=True):
        m = f["properties"]["measurements"]
        for name in LUAD_CLASSES:
            assert m[f"{name} area_um2"] == pytest.approx(r["classes"][name]["area_um2"])
            # no class exceeds the tissue of its region
            assert r["classes"][name]["area_um2"] <= r["tissue_area_um2"]
        # the tissue of a region is what was labelled in it: its classes add up to it
        total = math.fsum(c["area_um2"] for c in r["classes"].values())
        assert total == pytest.approx(r["tissue_area_um2"], rel=1e-12)
        assert math.fsum(c["fraction_of_tissue"] for c in r["classes"].values()) == (
            pytest.approx(1.0, rel=1e-12)
        )
    # the regions do not overlap: per-region areas add up to the slide's class areas, up to
    # the output pixels the region edges cut (perimeter x one output pixel of 16 level-0 px)
    edge_um2 = 2 * (4 * 800 + 2 * (1000 + 700)) * 16 * um2
    for name in LUAD_CLASSES:
        total = sum(r["classes"][name]["area_um2"] for r in report)
        assert total == pytest.approx(summary["classes"][name]["area_um2"], abs=edge_um2)
    assert 0 < summary["tissue"]["area_um2"] <= regions.area * um2
    assert summary["tissue"]["roi"] == str(roi) and summary["parameters"]["roi"] == str(roi)


def test_ids_qupath_sees_are_new_per_run_and_stable_for_the_same_run(roi_run, tiny_model_dir):
    """The ids QuPath's reader keeps (`UUID.fromString` of each feature's `id`): none equals
    an object of the user's (a plain import of a `--roi` result adds, it does not double an
    id), none repeats within the file, the same run gives the same bytes, and another run of
    the slide shares no id with it (importing both doubles no id either)."""
    result, roi = roi_run
    path = result.out_dir / "tissue.geojson"
    first = path.read_bytes()
    ids = [str(uuid.UUID(f["id"])) for f in json.loads(first)["features"]]
    users = [str(uuid.UUID(f["id"])) for f in json.loads(roi.read_text())["features"]]
    assert len(ids) == len(set(ids)) >= 5 and not set(ids) & set(users)
    params = SegmentParams(model_dir=tiny_model_dir, roi=roi, overwrite=True)
    again = segment_slide(CMU_SLIDE, result.out_dir.parent, params)
    assert again.status == "done" and path.read_bytes() == first
    # another run: one of the two regions (a run of the slide's few tiles in it)
    upper = qp.export(
        result.out_dir.parent.parent / "upper.geojson",
        [qp.annotation(qp.rect(700, 900, 1500, 1700), "upper", name="upper")],
    )
    other = segment_slide(
        CMU_SLIDE, result.out_dir.parent.parent / "other", dataclasses.replace(params, roi=upper)
    )
    other_ids = [
        f["id"] for f in json.loads((other.out_dir / "tissue.geojson").read_text())["features"]
    ]
    assert len(set(other_ids)) == len(other_ids) >= 2 and not set(other_ids) & set(ids)


def test_roi_is_part_of_the_fingerprint(roi_run, tiny_model_dir):
    result, roi = roi_run
    out = result.out_dir.parent
    params = SegmentParams(model_dir=tiny_model_dir, roi=roi)
    assert segment_slide(CMU_SLIDE, out, params).status == "up-to-date"
    doc = json.loads(roi.read_text())
    doc["features"] = doc["features"][:1]  # the user redrew the regions
    roi.write_text(json.dumps(doc))
    with pytest.raises(OutputError, match="different run"):
        segment_slide(CMU_SLIDE, out, params)


def test_bad_roi_file_is_refused_before_the_model_loads(tmp_path, tiny_model_dir):
    """A file of cells and points, and one whose region lies off the slide: one RoiError
    each, raised before the model starts loading (torch never imported), nothing written."""
    cells = qp.export(tmp_path / "cells.geojson", [qp.cell(5, 5, "c"), qp.points([(1, 2)], "p")])
    off = qp.export(tmp_path / "off.geojson", [qp.annotation(qp.rect(5000, 0, 6000, 90), "o")])
    code = f"""
import sys
import uuid
from wsi_segment.errors import RoiError
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide
for roi in sys.argv[1:]:
    try:
        segment_slide({str(CMU_SLIDE)!r}, {str(tmp_path / "out")!r},
                      SegmentParams(model_dir={str(tiny_model_dir)!r}, roi=roi))
    except RoiError as exc:
        print(type(exc).__name__, str(exc))
print("torch" in sys.modules)
"""
    run = subprocess.run(
        [sys.executable, "-c", code, str(cells), str(off)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stderr
    assert lines[0].startswith(f"RoiError {cells}: no area annotation to use as a region")
    assert lines[1].startswith(f"RoiError {off}: region 'ROI 1' lies wholly off the slide")
    assert lines[2] == "False"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert issubclass(RoiError, ConfigError)


def test_unknown_tissue_mode_is_refused():
    with pytest.raises(ConfigError, match="tissue mode"):
        SegmentParams(tissue="some")


def test_roi_class_areas_are_exact_to_the_label_raster(roi_run):
    """Per-region class areas come from the unsimplified polygons even though the GeoJSON's
    are simplified per chunk: each is the area of that class's output pixels inside the
    region (a rectangle: a pixel's share is the product of its x and y overlaps), to the
    pixels whose stored probabilities tie or are all 0 (labels precede quantisation)."""
    import zarr

    from tests.reference_inference import unique_positive_max

    result, _ = roi_run
    summary = summary_of(result)
    assert summary["parameters"]["simplify_tolerance"] > 0
    probs = zarr.open_group(str(result.out_dir / "probabilities.ome.zarr"), mode="r")["0/0"][:]
    top = probs.max(axis=0)
    clear = unique_positive_max(probs)
    argmax = probs.argmax(axis=0)
    scale = summary["output"]["level0_per_output_pixel"]
    um2 = summary["slide"]["mpp"]["x"] * summary["slide"]["mpp"]["y"]
    h, w = top.shape

    def overlap(n: int, lo: float, hi: float) -> np.ndarray:
        edges = np.arange(n + 1) * scale
        return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)

    # labelled pixels stored all 0 (the gate removed the sure class): at most a pixel each
    out_um2 = summary["output"]["mpp"]["x"] * summary["output"]["mpp"]["y"]
    labelled = round(sum(c["area_um2"] for c in summary["classes"].values()) / out_um2)
    gated_um2 = (labelled - int((top > 0).sum())) * scale * scale * um2
    boxes = [(700, 900, 1500, 1700), (300, 2200, 1300, 2900)]
    for (x0, y0, x1, y1), report in zip(boxes, summary["rois"], strict=True):
        wx, wy = overlap(w, x0, x1), overlap(h, y0, y1)
        total = sum(c["area_um2"] for c in report["classes"].values())
        positive = float(wy @ (top > 0) @ wx) * um2
        assert positive * (1 - 1e-9) <= total <= positive * (1 + 1e-9) + gated_um2
        for k, name in enumerate(LUAD_CLASSES):
            low = float(wy @ ((argmax == k) & clear) @ wx) * um2
            maybe = (probs[k] == top) & ~clear & (top > 0)
            high = low + float(wy @ maybe @ wx) * um2
            assert low - 1e-6 <= report["classes"][name]["area_um2"] <= high + 1e-6


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory):
    """642 x 515 px at 2 um/px: with the tiny model (2 um/px, output downsample 4) the output
    raster is 161 x 129 px, its last column and row hanging 0.5 and 0.25 px over the edge."""
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(200, 30, (515, 642, 3)), 0, 255).astype(np.uint8)
    return write_slide(tmp_path_factory.mktemp("odd") / "odd.tif", img, mpp=2.0)


def test_one_region_covering_the_slide_reports_the_slide_areas(tmp_path, tiny_model_dir, odd_slide):
    """A region drawn over the whole image (and past it) is cut to the slide; its class areas
    are the slide's, which count the output pixels over the slide's edge for their part on
    it only: with `--tissue all` the labelled area is the slide's area exactly. The run is
    the one without `--roi`."""
    roi = qp.export(tmp_path / "all.geojson", [qp.annotation(qp.rect(-50, -50, 700, 600), "a")])
    # torch, read in the thread, overlap 16 (48 px cores: 154 tiles, not 357): the subject is
    # the areas, not the runtime, the read source or the tiles (the raster is the same)
    params = dict(
        model_dir=tiny_model_dir, tissue="all", precision="fp32", device="cpu", runtime="torch",
        decoders=0, overlap=16,
    )  # fmt: skip
    with_roi = summary_of(
        segment_slide(odd_slide, tmp_path / "a", SegmentParams(**params, roi=roi))
    )
    plain = summary_of(segment_slide(odd_slide, tmp_path / "b", SegmentParams(**params)))
    region = with_roi["rois"][0]
    slide_um2 = 642 * 515 * 4.0
    assert region["area_um2"] == pytest.approx(slide_um2, rel=1e-12)
    assert with_roi["tissue"]["area_um2"] == pytest.approx(slide_um2, rel=1e-12)
    assert region["tissue_area_um2"] == pytest.approx(slide_um2, rel=1e-12)
    assert with_roi["classes"] == plain["classes"]
    for name in LUAD_CLASSES:
        whole = with_roi["classes"][name]
        assert region["classes"][name]["area_um2"] == pytest.approx(whole["area_um2"], rel=1e-12)
        assert region["classes"][name]["fraction_of_tissue"] == pytest.approx(
            whole["fraction_of_tissue"], rel=1e-12
        )
    assert sum(c["area_um2"] > 0 for c in plain["classes"].values()) >= 1
