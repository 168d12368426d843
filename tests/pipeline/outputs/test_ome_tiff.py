"""Pyramidal OME-TIFF copy of the probability maps, read back with tifffile."""

from __future__ import annotations

import uuid

import numpy as np
import tifffile
import zarr

from wsi_segment.pipeline.outputs.ome_tiff import write_probability_ome_tiff
from wsi_segment.pipeline.outputs.ome_zarr import (
    create_probability_store,
    finalize_pyramid,
    image_path,
)


def test_ome_tiff_matches_zarr_pyramid(tmp_path):
    store = tmp_path / "p.ome.zarr"
    arr = create_probability_store(
        store, ["TE", "NEC"], [(205, 51, 51), (0, 255, 0)], (300, 270), (64, 64), 2.0, 4.0,
        name="slide-1",
    )  # fmt: skip
    data = np.random.default_rng(1).integers(0, 256, (2, 300, 270), dtype=np.uint8)
    arr[:] = data
    n = finalize_pyramid(store, min_size=100)
    file_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    path = write_probability_ome_tiff(store, tmp_path / "probabilities.ome.tif", file_id, tile=64)
    group = zarr.open_group(image_path(store), mode="r")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX" and len(series.levels) == n == 3
        for i, level in enumerate(series.levels):
            np.testing.assert_array_equal(level.asarray(), group[str(i)][:])
        page = tif.pages[0]
        assert page.tile == (64, 64) and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.resolution == (5000.0, 5000.0)  # px per cm at 2 um/px
        root = tifffile.xml2dict(tif.ome_metadata)["OME"]
    assert root["UUID"] == f"urn:uuid:{file_id}"
    ome = root["Image"]
    assert ome["Name"] == "slide-1"
    pixels = ome["Pixels"]
    assert pixels["PhysicalSizeX"] == 2.0 and pixels["PhysicalSizeXUnit"] == "µm"
    assert [c["Name"] for c in pixels["Channel"]] == ["TE", "NEC"]
    assert pixels["Channel"][0]["Color"] == -852282369  # 0xCD3333FF as signed int32
    assert not list(tmp_path.glob(".*"))


def test_the_same_store_and_id_give_the_same_bytes(tmp_path):
    """tifffile's own UUID is time-based (uuid1): every file differed in 12 bytes."""
    store = tmp_path / "p.ome.zarr"
    arr = create_probability_store(store, ["TE"], [(205, 51, 51)], (70, 90), (64, 64), 2.0, 4.0)
    arr[:] = np.random.default_rng(2).integers(0, 256, (1, 70, 90), dtype=np.uint8)
    file_id = uuid.UUID(int=7)
    first = write_probability_ome_tiff(store, tmp_path / "a.ome.tif", file_id, tile=64)
    second = write_probability_ome_tiff(store, tmp_path / "b.ome.tif", file_id, tile=64)
    assert first.read_bytes() == second.read_bytes()
