"""summary.json: areas, measurements, versions, strict JSON on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.summary import (
    build_summary,
    class_areas,
    class_measurements,
    read_summary,
    software_versions,
    write_summary,
)


def test_class_areas_exact():
    areas = class_areas({"TE": 300, "NEC": 100, "LYM": 0}, 4.0, 500)
    assert areas["TE"] == {"pixels": 300, "area_um2": 4800.0, "fraction_of_tissue": 0.6}
    assert areas["NEC"]["fraction_of_tissue"] == 0.2
    assert areas["LYM"] == {"pixels": 0, "area_um2": 0.0, "fraction_of_tissue": 0.0}
    assert class_areas({"TE": 3}, (2.0, 0.5), 0)["TE"]["area_um2"] == 3.0


def test_class_measurements():
    m = class_measurements(["A", "B"], np.array([4, 0]), np.array([3.0, 0.0]), 2.0)
    assert m == {"A": {"area_um2": 16.0, "mean_probability": 0.75}, "B": {"area_um2": 0.0}}


def test_software_versions():
    v = software_versions()
    for key in ("python", "torch", "zarr", "numpy", "dask", "shapely", "rasterio", "tiffslide"):
        assert isinstance(v[key], str) and v[key]
    assert "wsi-segment" in v and "openslide" in v


def test_build_and_write_summary(tmp_path):
    summary = build_summary(
        slide={"path": tmp_path / "s.svs", "backend": "openslide", "mpp": (0.25, 0.25)},
        model={"name": "demo", "sha256": "ab" * 32},
        params={"overlap": np.int64(32), "gate": True, "mpp": None},
        classes=class_areas({"TE": np.int64(10)}, 4.0, 20),
        timings={"inference_s": np.float32(1.5), "bad": float("nan")},
        outputs={"level0_downsample": 8.0, "offset_level0": (0, 0)},
        fingerprint="f" * 64,
    )
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
