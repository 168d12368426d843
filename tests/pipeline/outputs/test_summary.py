"""summary.json: areas, measurements, versions, strict JSON on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsi_segment.pipeline.outputs.summary import (
    class_measurements,
    read_summary,
    software_versions,
    write_summary,
)


def test_class_measurements():
    m = class_measurements(["A", "B"], np.array([4, 0]), np.array([3.0, 0.0]), 2.0)
    assert m == {"A": {"area_um2": 16.0, "mean_probability": 0.75}, "B": {"area_um2": 0.0}}


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
