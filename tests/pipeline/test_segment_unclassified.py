"""Tissue the classification gate leaves with no class, on a real run: the demo model with its
gate's epsilon raised to 0.99 in model.json (a copied model folder), so on the real CMU slide
the classifier rules every class out on some tiles and not on others. That tissue is
`Unclassified` everywhere alike: label value 255, a GeoJSON feature, summary areas (slide-wide
and per region), grey in the overlay; outside the tissue stays "no class"."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image
from shapely.geometry import shape

from tests.conftest import CMU_SLIDE
from tests.pipeline.test_segment_agreement import _rasterise, _visible_centres
from tests.wsi import qupath_exports as qp
from wsi_segment.models.bundle import demo_model_dir
from wsi_segment.models.labels import UNCLASSIFIED_COLOR, UNCLASSIFIED_NAME
from wsi_segment.pipeline.outputs.finish_outputs import THUMB_SIZE, overlay_thumbnail
from wsi_segment.pipeline.outputs.label_image import label_level0_path
from wsi_segment.pipeline.outputs.ome_zarr import level0_path
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide
from wsi_segment.wsi.slide import open_slide

EPSILON = 0.99
UNCLASSIFIED_VALUE = 255  # in the label image


@dataclass
class Run:
    out_dir: Path
    params: SegmentParams
    summary: dict[str, Any]
    features: dict[str, dict[str, Any]]  # class features of tissue.geojson (+ Unclassified)
    values: np.ndarray  # the label image, level 0
    probs: np.ndarray  # the probabilities, level 0


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The gated run, exact polygons (tolerance 0), one region covering the whole slide."""
    tmp = tmp_path_factory.mktemp("unclassified")
    model = tmp / "model"
    shutil.copytree(demo_model_dir(), model)
    doc = json.loads((model / "model.json").read_text())
    doc["gate_epsilon"] = EPSILON
    (model / "model.json").write_text(json.dumps(doc, indent=2))
    with open_slide(CMU_SLIDE) as slide:
        w0, h0 = slide.dimensions
    roi = qp.export(tmp / "roi.geojson", [qp.annotation(qp.rect(0, 0, w0, h0), "whole")])
    # torch: the gate's outputs, not the runtime choice (its own tests; test_segment.py runs
    # the demo model end to end under auto)
    params = SegmentParams(
        model_dir=model,
        device="cpu",
        precision="fp32",
        runtime="torch",
        simplify_tolerance=0.0,
        roi=roi,
    )
    return _run(tmp / "out", params)


def _run(out: Path, params: SegmentParams) -> Run:
    result = segment_slide(CMU_SLIDE, out, params)
    assert result.status == "done" and result.out_dir is not None
    out_dir = result.out_dir
    summary = json.loads((out_dir / "summary.json").read_text())
    fc = json.loads((out_dir / "tissue.geojson").read_text())
    names = [*summary["model"]["classes"], UNCLASSIFIED_NAME]  # not Tissue, not the regions
    features = {
        f["properties"]["classification"]["name"]: f
        for f in fc["features"]
        if f["properties"]["classification"]["name"] in names
    }
    store = out_dir / "probabilities.ome.zarr"
    values = np.asarray(zarr.open_array(label_level0_path(store), mode="r")[:])
    probs = np.asarray(zarr.open_array(level0_path(store), mode="r")[:])
    return Run(out_dir, params, summary, features, values, probs)


def test_gated_tissue_has_the_unclassified_value_and_no_probability(gated: Run) -> None:
    values, probs = gated.values, gated.probs
    assert set(np.unique(values)) <= {0, 1, 2, 3, 4, UNCLASSIFIED_VALUE}
    tissue = values != 0
    unclassified = values == UNCLASSIFIED_VALUE
    # the premise: the gate rules every class out on some tissue, not on all of it
    assert 0.05 < unclassified.sum() / tissue.sum() < 0.95
    assert not probs[:, unclassified].any()  # every class gated there: all stored as 0
    assert not probs[:, ~tissue].any()  # outside the tissue: not analysed, no class


def test_summary_reports_unclassified_slide_wide_and_per_region(gated: Run) -> None:
    s = gated.summary
    assert s["schema_version"] == 4
    classes = s["classes"]
    assert list(classes) == [*s["model"]["classes"], UNCLASSIFIED_NAME]
    # areas from the label image, each output pixel for its part on the slide
    scale = s["output"]["level0_per_output_pixel"]
    w0, h0 = s["slide"]["dimensions"]
    h, w = gated.values.shape
    on = np.outer(
        np.clip(h0 / scale - np.arange(h), 0.0, 1.0), np.clip(w0 / scale - np.arange(w), 0.0, 1.0)
    )
    px_um2 = s["output"]["mpp"]["x"] * s["output"]["mpp"]["y"]
    unclassified_um2 = float(on[gated.values == UNCLASSIFIED_VALUE].sum()) * px_um2
    tissue_um2 = float(on[gated.values != 0].sum()) * px_um2
    u = classes[UNCLASSIFIED_NAME]
    assert u["area_um2"] == pytest.approx(unclassified_um2, rel=1e-12)
    assert u["mean_probability"] is None
    assert u["fraction_of_tissue"] == pytest.approx(unclassified_um2 / tissue_um2, rel=1e-12)
    # the tissue is every class and Unclassified: nothing of it left out
    assert s["tissue"]["area_um2"] == pytest.approx(tissue_um2, rel=1e-12)
    assert sum(c["area_um2"] for c in classes.values()) == pytest.approx(tissue_um2, rel=1e-12)
    assert sum(c["fraction_of_tissue"] for c in classes.values()) == pytest.approx(1.0)
    (region,) = s["rois"]  # covers the slide: the slide's areas, Unclassified among them
    assert list(region["classes"]) == list(classes)
    for name, c in classes.items():
        assert region["classes"][name]["area_um2"] == pytest.approx(c["area_um2"], rel=1e-9)
    assert region["tissue_area_um2"] == pytest.approx(tissue_um2, rel=1e-9)


def test_geojson_has_an_unclassified_feature_exact_to_the_label_image(gated: Run) -> None:
    s = gated.summary
    names = [*s["model"]["classes"], UNCLASSIFIED_NAME]
    u = gated.features[UNCLASSIFIED_NAME]["properties"]
    assert u["classification"] == {"name": UNCLASSIFIED_NAME, "color": list(UNCLASSIFIED_COLOR)}
    assert u["objectType"] == "annotation"
    assert u["measurements"] == {"area_um2": s["classes"][UNCLASSIFIED_NAME]["area_um2"]}
    # class polygons rasterised at output pixel centres = the label image (Unclassified: 255)
    geoms = {names.index(n): shape(f["geometry"]) for n, f in gated.features.items()}
    geoms[UNCLASSIFIED_VALUE - 1] = geoms.pop(len(names) - 1)
    scale = s["output"]["level0_per_output_pixel"]
    off = s["slide"]["qupath_offset_level0"]
    w0, h0 = s["slide"]["dimensions"]
    h, w = gated.values.shape
    keep_x, keep_y = np.arange(w) * scale < w0, np.arange(h) * scale < h0
    xs, ys = np.meshgrid(
        _visible_centres(w, scale, off["x"], w0), _visible_centres(h, scale, off["y"], h0)
    )
    raster = _rasterise(geoms, xs, ys)
    np.testing.assert_array_equal(
        raster[np.ix_(keep_y, keep_x)], gated.values[np.ix_(keep_y, keep_x)]
    )


def test_overlay_shows_unclassified_tissue_in_grey_with_a_legend_entry(gated: Run) -> None:
    """Every overlay pixel is the thumbnail blended (alpha 0.4) with the colour of the label
    under its centre; Unclassified pixels with the grey, which the legend shows too."""
    s = gated.summary
    with open_slide(CMU_SLIDE) as slide:
        thumb = overlay_thumbnail(slide, THUMB_SIZE)
    th, tw = thumb.shape[:2]
    png = np.asarray(Image.open(gated.out_dir / "overlay.png").convert("RGB"))
    scale = s["output"]["level0_per_output_pixel"]
    w0, h0 = s["slide"]["dimensions"]
    ox = np.floor((np.arange(tw) + 0.5) * (w0 / tw) / scale).astype(np.int64)
    oy = np.floor((np.arange(th) + 0.5) * (h0 / th) / scale).astype(np.int64)
    shown = gated.values[np.ix_(oy, ox)]
    assert (shown == UNCLASSIFIED_VALUE).mean() > 0.01
    palette = np.zeros((256, 3), np.float32)
    palette[1 : len(s["model"]["classes"]) + 1] = _model_colours(gated)
    palette[UNCLASSIFIED_VALUE] = UNCLASSIFIED_COLOR
    expected = thumb[..., :3].astype(np.float32)
    tissue = shown > 0
    expected[tissue] = 0.6 * expected[tissue] + 0.4 * palette[shown[tissue]]
    np.testing.assert_array_equal(png[:th, :tw], np.clip(np.rint(expected), 0, 255))
    legend = png[:, tw:]
    assert (legend == UNCLASSIFIED_COLOR).all(axis=-1).sum() >= 50  # its swatch


def _model_colours(run: Run) -> list[list[int]]:
    attrs = zarr.open_group(run.out_dir / "probabilities.ome.zarr" / "0", mode="r").attrs
    colours: list[list[int]] = attrs["wsi_segment"]["colors"]  # type: ignore[index,assignment]
    return colours


@pytest.mark.slow
def test_the_gate_changes_classes_never_the_tissue(gated: Run, tmp_path: Path) -> None:
    """The same model without the gate labels exactly the same pixels as tissue, none of
    them Unclassified; the gated run differs only in which class (or Unclassified)."""
    plain = _run(tmp_path, dataclasses.replace(gated.params, gate=False))
    assert not (plain.values == UNCLASSIFIED_VALUE).any()
    np.testing.assert_array_equal(plain.values != 0, gated.values != 0)
    assert plain.summary["tissue"]["area_um2"] == pytest.approx(
        gated.summary["tissue"]["area_um2"], rel=1e-12
    )
    assert plain.summary["classes"][UNCLASSIFIED_NAME]["area_um2"] == 0.0
    assert UNCLASSIFIED_NAME not in plain.features
