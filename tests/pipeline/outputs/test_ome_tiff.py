"""Pyramidal OME-TIFF copy of the probability maps, read back with tifffile."""

from __future__ import annotations

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
    path = write_probability_ome_tiff(store, tmp_path / "probabilities.ome.tif", tile=64)
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
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    assert ome["Name"] == "slide-1"
    pixels = ome["Pixels"]
    assert pixels["PhysicalSizeX"] == 2.0 and pixels["PhysicalSizeXUnit"] == "µm"
    assert [c["Name"] for c in pixels["Channel"]] == ["TE", "NEC"]
    assert pixels["Channel"][0]["Color"] == -852282369  # 0xCD3333FF as signed int32
    assert not list(tmp_path.glob(".*"))
