"""No tissue / fluorescence warnings, `--tissue all` and `--roi`, end to end with a real model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from tests.conftest import CMU_SLIDE, LUAD_CLASSES
from tests.wsi.test_tissue import write_slide
from wsi_segment.errors import ConfigError, OutputError
from wsi_segment.pipeline.batch_report import batch_rows
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide


@pytest.fixture(scope="module")
def blank_slide(tmp_path_factory):
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (512, 640, 3)), 0, 255).astype(np.uint8)
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
    # 640 x 512 px at 2 um/px = model px (tile 64, overlap 32: stride 32) -> 20 x 16 tiles
    assert summary["tiling"]["tiles"] == 20 * 16
    labelled = sum(c["area_um2"] for c in summary["classes"].values())
    assert labelled == pytest.approx(640 * 512 * 4.0)  # every pixel labelled
    assert summary["tissue"]["area_um2"] == pytest.approx(640 * 512 * 4.0)
    # a different run than auto: the fingerprint says so
    with pytest.raises(OutputError, match="different run"):
        segment_slide(blank_slide, tmp_path, SegmentParams(model_dir=tiny_model_dir))


def qupath_rois(path, offset=(0, 0)):
    """Two rectangles drawn in QuPath over CMU tissue, and a named polygon."""

    def rect(x0, y0, x1, y1):
        return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]

    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rect(700, 900, 1500, 1700)},
            "properties": {"objectType": "annotation", "name": "upper"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rect(300, 2200, 1300, 2900)},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Region*", "color": [0, 0, 180]},
            },
        },
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def roi_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("roi")
    roi = qupath_rois(tmp / "cmu.geojson")
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
    rois = by_class["ROI"]
    assert [f["properties"]["name"] for f in rois] == ["upper", "Region*"]
    report = summary["rois"]
    assert [r["name"] for r in report] == ["upper", "Region*"]
    um2 = 0.499 * 0.499
    assert report[0]["area_um2"] == pytest.approx(800 * 800 * um2)
    for f, r in zip(rois, report, strict=True):
        m = f["properties"]["measurements"]
        for name in LUAD_CLASSES:
            assert m[f"{name} area_um2"] == pytest.approx(r["classes"][name]["area_um2"])
        # class areas add up to the tissue in the region (classes tile the tissue)
        assert sum(c["area_um2"] for c in r["classes"].values()) == pytest.approx(
            r["tissue_area_um2"], rel=0.02
        )
    # the regions do not overlap: per-region areas add up to the slide's class areas, up to
    # the output pixels the region edges cut (perimeter x one output pixel of 16 level-0 px)
    edge_um2 = 2 * (4 * 800 + 2 * (1000 + 700)) * 16 * um2
    for name in LUAD_CLASSES:
        total = sum(r["classes"][name]["area_um2"] for r in report)
        assert total == pytest.approx(summary["classes"][name]["area_um2"], abs=edge_um2)
    assert 0 < summary["tissue"]["area_um2"] <= regions.area * um2
    assert summary["tissue"]["roi"] == str(roi) and summary["parameters"]["roi"] == str(roi)


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


def test_bad_roi_file_is_a_clear_error(tmp_path, tiny_model_dir):
    bad = tmp_path / "points.geojson"
    bad.write_text(
        json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}})
    )
    with pytest.raises(ConfigError, match=r"points\.geojson: feature 1 is a Point"):
        segment_slide(CMU_SLIDE, tmp_path / "out", SegmentParams(model_dir=tiny_model_dir, roi=bad))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


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
