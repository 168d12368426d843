"""summary.json: areas, measurements, versions, strict JSON on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsi_segment.pipeline.outputs.summary import (
    class_measurements,
    class_summary,
    read_summary,
    software_versions,
    write_summary,
)


def test_class_measurements():
    m = class_measurements(["A", "B"], np.array([4, 0]), np.array([3.0, 0.0]), 2.0)
    assert m == {"A": {"area_um2": 16.0, "mean_probability": 0.75}, "B": {"area_um2": 0.0}}


NAMES = ["TE", "NEC", "Unclassified"]


def test_class_summary_keeps_measured_zeros_and_leaves_undefined_values_null():
    """A class with no pixels in tissue: its share is a measured 0.0, its mean probability
    (over no pixels) is null, not 0.0; Unclassified's probability is always null."""
    counts, sums, area_px = np.array([4, 0, 2]), np.array([3.0, 0, 0]), np.array([4.0, 0, 2])
    classes = class_summary(NAMES, counts, sums, area_px, 2.0)
    assert classes == {
        "TE": {"area_um2": 8.0, "fraction_of_tissue": 4 / 6, "mean_probability": 0.75},
        "NEC": {"area_um2": 0.0, "fraction_of_tissue": 0.0, "mean_probability": None},
        "Unclassified": {"area_um2": 4.0, "fraction_of_tissue": 2 / 6, "mean_probability": None},
    }


def test_class_summary_without_tissue_has_no_shares_or_means():
    """No tissue: every area is a measured 0.0, every share and mean undefined (null in
    summary.json), where they were written as 0.0."""
    zeros = np.zeros(3)
    classes = class_summary(NAMES, zeros.astype(np.int64), zeros, zeros, 2.0)
    undefined = {"area_um2": 0.0, "fraction_of_tissue": None, "mean_probability": None}
    assert classes == dict.fromkeys(NAMES, undefined)


def test_software_versions():
    v = software_versions()
    for key in ("python", "torch", "zarr", "numpy", "dask", "shapely", "rasterio", "tiffslide"):
        assert isinstance(v[key], str) and v[key]
    assert "wsi-segment" in v and "openslide" in v


def test_write_summary_is_strict_json(tmp_path):
    summary = {
        "schema_version": 1,
        "fingerprint": "f" * 64,
        "slide": {"path": tmp_path / "s.svs", "backend": "openslide", "mpp": (0.25, 0.25)},
        "params": {"overlap": np.int64(32), "gate": True, "mpp": None},
        "classes": {"TE": {"fraction_of_tissue": np.float64(0.5)}},
        "timings_s": {"inference_s": np.float32(1.5), "bad": float("nan")},
        "software": software_versions(),
    }
    path = write_summary(tmp_path / "summary.json", summary)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text
    data = json.loads(text)
    assert data == read_summary(path)
    assert data["schema_version"] == 1 and data["fingerprint"] == "f" * 64
    assert data["slide"]["mpp"] == [0.25, 0.25]
    assert data["slide"]["path"].endswith("s.svs")
    assert data["params"] == {"overlap": 32, "gate": True, "mpp": None}
    assert data["classes"]["TE"]["fraction_of_tissue"] == 0.5
    assert data["timings_s"] == {"inference_s": 1.5, "bad": None}
    assert data["software"]["numpy"] == np.__version__
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_read_summary_missing_or_broken(tmp_path, content):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    assert read_summary(path) is None
