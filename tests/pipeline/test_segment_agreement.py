"""One answer everywhere: on a real run, the stored label image, the GeoJSON, the summary's
class areas and overlay.png say the same class for every pixel they share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import zarr
from PIL import Image
from shapely.geometry import shape

from tests.conftest import CMU_SLIDE
from wsi_segment.pipeline.outputs.finish_outputs import THUMB_SIZE, overlay_thumbnail
from wsi_segment.pipeline.outputs.label_image import label_level0_path, open_label_levels
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide
from wsi_segment.wsi.slide import open_slide


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory, tiny_model_dir):
    """The tiny model on the real CMU slide with exact polygons (tolerance 0), so the GeoJSON
    can be compared with the label raster pixel for pixel."""
    out = tmp_path_factory.mktemp("agree")
    params = SegmentParams(model_dir=tiny_model_dir, device="cpu", simplify_tolerance=0.0)
    result = segment_slide(CMU_SLIDE, out, params)
    assert result.status == "done" and result.out_dir is not None
    summary = json.loads((result.out_dir / "summary.json").read_text())
    fc = json.loads((result.out_dir / "tissue.geojson").read_text())
    classes = summary["model"]["classes"]
    geoms = {
        classes.index(f["properties"]["classification"]["name"]): shape(f["geometry"])
        for f in fc["features"]
        if f["properties"]["classification"]["name"] in classes
    }
    values = np.asarray(
        zarr.open_array(label_level0_path(result.out_dir / "probabilities.ome.zarr"), mode="r")[:]
    )
    return result.out_dir, summary, geoms, values


def _rasterise(geoms, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Label value (class + 1, 0 for none) of the GeoJSON at level-0 points (x, y)."""
    out = np.zeros(xs.shape, np.uint8)
    for k, geom in geoms.items():
        inside = shapely.contains_xy(geom, xs, ys)
        assert not out[inside].any(), "classes overlap"
        out[inside] = k + 1
    return out


def _visible_centres(n: int, scale: float, offset: float, extent: int) -> np.ndarray:
    """Level-0 (QuPath frame) centre of the part of each output pixel inside the slide: the
    GeoJSON is clipped to the slide, so the last pixel's own centre may lie outside it."""
    lo = np.arange(n) * scale
    hi = np.minimum(lo + scale, extent)
    return (lo + hi) / 2 + offset


def test_label_image_equals_the_geojson_and_the_summary_areas(exact_run):
    out_dir, summary, geoms, values = exact_run
    assert values.any() and len(geoms) >= 2  # tissue found, several classes to tell apart
    scale = summary["output"]["level0_per_output_pixel"]
    off = summary["slide"]["qupath_offset_level0"]
    w0, h0 = summary["slide"]["dimensions"]
    h, w = values.shape
    keep_x = np.arange(w) * scale < w0  # output pixels that show some of the slide
    keep_y = np.arange(h) * scale < h0
    xs, ys = np.meshgrid(
        _visible_centres(w, scale, off["x"], w0), _visible_centres(h, scale, off["y"], h0)
    )
    raster = _rasterise(geoms, xs, ys)
    np.testing.assert_array_equal(raster[np.ix_(keep_y, keep_x)], values[np.ix_(keep_y, keep_x)])
    px_um2 = summary["output"]["mpp"]["x"] * summary["output"]["mpp"]["y"]
    # each label pixel counts for its part on the slide (the last column and row can hang
    # over the slide's edge)
    on_x = np.clip(w0 / scale - np.arange(w), 0.0, 1.0)
    on_y = np.clip(h0 / scale - np.arange(h), 0.0, 1.0)
    areas = np.bincount(
        values.ravel(),
        weights=np.outer(on_y, on_x).ravel(),
        minlength=len(summary["model"]["classes"]) + 1,
    )
    for k, name in enumerate(summary["model"]["classes"]):
        assert summary["classes"][name]["area_um2"] == pytest.approx(areas[k + 1] * px_um2)
    levels = open_label_levels(out_dir / "probabilities.ome.zarr")
    assert len(levels) == summary["output"]["pyramid_levels"]
    for level, arr in enumerate(levels):
        np.testing.assert_array_equal(arr[:], values[:: 2**level, :: 2**level])


def test_overlay_shows_the_geojson_class_under_every_pixel(exact_run):
    """overlay.png pixel (x, y) = the thumbnail blended with the colour of the GeoJSON class of
    the output pixel under its centre (untouched where there is none)."""
    out_dir, summary, geoms, values = exact_run
    with open_slide(CMU_SLIDE) as slide:
        thumb = overlay_thumbnail(slide, THUMB_SIZE)
    th, tw = thumb.shape[:2]
    png = np.asarray(Image.open(out_dir / "overlay.png").convert("RGB"))[:th, :tw]
    scale = summary["output"]["level0_per_output_pixel"]
    off = summary["slide"]["qupath_offset_level0"]
    w0, h0 = summary["slide"]["dimensions"]
    assert max(values.shape) <= 2 * THUMB_SIZE  # the overlay reads level 0 of the labels here
    ox = np.floor((np.arange(tw) + 0.5) * (w0 / tw) / scale).astype(np.int64)
    oy = np.floor((np.arange(th) + 0.5) * (h0 / th) / scale).astype(np.int64)
    cx = _visible_centres(values.shape[1], scale, off["x"], w0)[ox]
    cy = _visible_centres(values.shape[0], scale, off["y"], h0)[oy]
    xs, ys = np.meshgrid(cx, cy)
    shown = _rasterise(geoms, xs, ys)
    assert (shown > 0).mean() > 0.05
    palette = np.zeros((256, 3), np.float32)
    palette[1 : len(summary["model"]["classes"]) + 1] = np.asarray(
        [[int(c) for c in col] for col in _colours(summary, out_dir)], np.float32
    )
    expected = thumb[..., :3].astype(np.float32)
    tissue = shown > 0
    expected[tissue] = (1 - 0.4) * expected[tissue] + 0.4 * palette[shown[tissue]]
    expected_u8 = np.clip(np.rint(expected), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(png, expected_u8)


def _colours(summary, out_dir) -> list[list[int]]:
    attrs = zarr.open_group(out_dir / "probabilities.ome.zarr" / "0", mode="r").attrs
    colours: list[list[int]] = attrs["wsi_segment"]["colors"]  # type: ignore[index,assignment]
    assert len(colours) == len(summary["model"]["classes"])
    return colours
