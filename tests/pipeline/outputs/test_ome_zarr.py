"""OME-Zarr probability store: real zarr stores on disk, read back with zarr and ome-zarr-py."""

from __future__ import annotations

import json

import numpy as np
import ome_types
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v04 import Image
from ome_zarr_models.v04.bioformats2raw import BioFormats2Raw

from wsi_segment.errors import ConfigError, OutputError
from wsi_segment.pipeline.outputs.ome_xml import probability_ome_xml
from wsi_segment.pipeline.outputs.ome_zarr import (
    ATTRS_KEY,
    create_probability_store,
    downsample_mean2,
    finalize_pyramid,
    image_path,
    level0_path,
    open_probability_store,
)

NAMES = ["TE", "NEC", "LYM", "TAS"]
COLORS = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)]


def _numpy_mean2(a: np.ndarray) -> np.ndarray:
    """Reference: mean of the existing pixels of each 2x2 cell, rounded half up."""
    c, h, w = a.shape
    out = np.zeros((c, (h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
    for y in range(out.shape[1]):
        for x in range(out.shape[2]):
            cell = a[:, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].astype(np.float64)
            out[:, y, x] = np.floor(cell.mean(axis=(1, 2)) + 0.5)
    return out


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "probabilities.ome.zarr"
    arr = create_probability_store(
        path,
        NAMES,
        COLORS,
        (75, 101),
        (16, 16),
        (2.0, 2.5),
        8.0,
        offset_level0=(-10, 20),
        name="slide-1",
    )
    data = np.random.default_rng(0).integers(0, 256, (4, 75, 101), dtype=np.uint8)
    # Written block by block, aligned to the chunks, as the inference writers do.
    for y in range(0, 75, 16):
        for x in range(0, 101, 16):
            arr[:, y : y + 16, x : x + 16] = data[:, y : y + 16, x : x + 16]
    return path, data


def test_level0_layout(store):
    path, data = store
    zarray = json.loads((level0_path(path) / ".zarray").read_text())
    assert zarray["zarr_format"] == 2
    assert zarray["shape"] == [4, 75, 101]
    assert zarray["chunks"] == [1, 16, 16]
    assert zarray["dtype"] == "|u1"
    assert zarray["fill_value"] == 0
    assert zarray["dimension_separator"] == "/"
    assert zarray["compressor"]["id"] == "blosc"
    assert json.loads((path / ".zgroup").read_text())["zarr_format"] == 2
    assert json.loads((image_path(path) / ".zgroup").read_text())["zarr_format"] == 2
    assert (level0_path(path) / "2" / "1" / "3").is_file()  # nested "c/y/x" chunk keys
    np.testing.assert_array_equal(zarr.open_array(level0_path(path), mode="r")[:], data)


def test_pyramid_equals_numpy_mean(store):
    path, data = store
    n = finalize_pyramid(path, min_size=16)
    group = zarr.open_group(image_path(path), mode="r")
    shapes = [group[str(i)].shape for i in range(n)]
    assert shapes == [(4, 75, 101), (4, 38, 51), (4, 19, 26), (4, 10, 13)]
    assert "4" not in group
    ref = data
    for level in range(1, n):
        ref = _numpy_mean2(ref)
        np.testing.assert_array_equal(group[str(level)][:], ref)


def test_downsample_edges():
    a = np.array([[[10, 20, 31], [30, 40, 50]]], dtype=np.uint8)
    # [10,20,30,40] -> 25; lone column [31, 50] -> 40.5 -> 41
    np.testing.assert_array_equal(downsample_mean2(a), [[[25, 41]]])


def test_metadata_exact(store):
    path, _ = store
    finalize_pyramid(path, min_size=16)
    attrs = zarr.open_group(image_path(path), mode="r").attrs.asdict()
    ms = attrs["multiscales"]
    assert len(ms) == 1 and ms[0]["version"] == "0.4"
    assert ms[0]["name"] == "slide-1"
    assert ms[0]["axes"] == [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    ds = ms[0]["datasets"]
    assert [d["path"] for d in ds] == ["0", "1", "2", "3"]
    assert ds[0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 2.5, 2.0]},
        {"type": "translation", "translation": [0.0, 0.0, 0.0]},
    ]
    assert ds[2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 10.0, 8.0]},
        {"type": "translation", "translation": [0.0, 3.75, 3.0]},
    ]
    channels = attrs["omero"]["channels"]
    assert [c["label"] for c in channels] == NAMES
    assert [c["color"] for c in channels] == ["CD3333", "00FF00", "4169E1", "FFA500"]
    assert channels[0]["window"] == {"start": 0, "end": 255, "min": 0, "max": 255}
    custom = attrs[ATTRS_KEY]
    assert custom["level0_downsample"] == {"x": 8.0, "y": 8.0}
    assert custom["offset_level0"] == {"x": -10.0, "y": 20.0}
    assert custom["output_mpp"] == {"x": 2.0, "y": 2.5}
    assert custom["class_names"] == NAMES
    assert custom["colors"] == [list(c) for c in COLORS]
    Image.from_zarr(zarr.open_group(image_path(path), mode="r"))  # the 0.4 models validate
    BioFormats2Raw.from_zarr(zarr.open_group(path, mode="r"))  # the layout, image "0" in it


def test_ome_zarr_reader(store):
    path, data = store
    finalize_pyramid(path, min_size=16)
    nodes = list(Reader(parse_url(str(image_path(path))))())
    image = nodes[0]
    assert image.metadata["channel_names"] == NAMES
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
    assert len(image.data) == 4
    np.testing.assert_array_equal(image.data[0].compute(), data)
    assert image.metadata["colormap"][1] == [[0, 0, 0], [0.0, 1.0, 0.0]]


def test_valid_before_finalize_and_rerun(store):
    path, _ = store
    group = zarr.open_group(image_path(path), mode="r")
    assert [d["path"] for d in group.attrs["multiscales"][0]["datasets"]] == ["0"]
    assert finalize_pyramid(path, min_size=16) == 4
    assert finalize_pyramid(path, min_size=40) == 3  # rebuilt, stale level removed
    group = zarr.open_group(image_path(path), mode="r")
    assert "3" not in group
    assert len(group.attrs["multiscales"][0]["datasets"]) == 3


def test_small_map_has_one_level(tmp_path):
    path = tmp_path / "p.ome.zarr"
    create_probability_store(path, ["a"], [(1, 2, 3)], (10, 12), (256, 256), 4.0, 8.0)
    assert finalize_pyramid(path) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_names": ["a", "b"], "colors": [(1, 2, 3)]},
        {"output_mpp": 0.0},
        {"level0_downsample": (1.0, -2.0)},
        {"shape_yx": (0, 5)},
    ],
)
def test_bad_parameters(tmp_path, kwargs):
    args = {
        "class_names": ["a"],
        "colors": [(1, 2, 3)],
        "shape_yx": (10, 10),
        "chunk_yx": (8, 8),
        "output_mpp": 1.0,
        "level0_downsample": 2.0,
    } | kwargs
    with pytest.raises(ConfigError):
        create_probability_store(tmp_path / "x.zarr", **args)


def test_bioformats2raw_layout(store):
    """Root: only the layout version; series list in OME/; the image is group "0"."""
    path, _ = store
    finalize_pyramid(path, min_size=16)
    assert json.loads((path / ".zattrs").read_text()) == {"bioformats2raw.layout": 3}
    assert json.loads((path / "OME" / ".zattrs").read_text()) == {"series": ["0"]}
    assert (path / "OME" / "METADATA.ome.xml").is_file()
    root = zarr.open_group(path, mode="r")
    assert sorted(root.group_keys()) == ["0", "OME"] and not list(root.array_keys())
    # ome-zarr-py's Reader (napari-ome-zarr) finds no image at the root: users open "0"
    assert list(Reader(parse_url(str(path)))()) == []


def test_ome_xml_describes_series_0_level_0(store):
    """What Bio-Formats (QuPath 0.6) reads, valid against the OME 2016-06 schema."""
    path, _ = store
    finalize_pyramid(path, min_size=16)
    xml = (path / "OME" / "METADATA.ome.xml").read_text(encoding="utf-8")
    ome = ome_types.from_xml(xml, validate=True)
    (image,) = ome.images
    px = image.pixels
    level0 = zarr.open_array(level0_path(path), mode="r")
    assert (px.size_c, px.size_y, px.size_x, px.size_z, px.size_t) == (*level0.shape, 1, 1)
    assert px.type.value == str(level0.dtype) == "uint8"
    assert image.name == "slide-1"
    assert [c.name for c in px.channels] == NAMES
    assert [c.color.as_rgb_tuple(alpha=False) for c in px.channels] == COLORS
    assert [int(c.color) for c in px.channels] == [-852282369, 16711935, 1097458175, -5963521]
    assert (px.physical_size_x, px.physical_size_y) == (2.0, 2.5)
    assert px.physical_size_x_unit.value == px.physical_size_y_unit.value == "µm"
    assert px.metadata_only is not None  # the pixels are the zarr arrays, not in the XML


def test_ome_xml_validation_catches_a_broken_document(store):
    """The schema check is real: the same XML without MetadataOnly (required) is refused."""
    path, _ = store
    xml = (path / "OME" / "METADATA.ome.xml").read_text(encoding="utf-8")
    broken = xml.replace("<MetadataOnly />", "")
    assert broken != xml
    with pytest.raises(Exception, match=r"(?i)valid"):
        ome_types.from_xml(broken, validate=True)


def test_open_refuses_a_store_without_the_layout(tmp_path):
    old = zarr.open_group(str(tmp_path / "old.ome.zarr"), mode="w", zarr_format=2)
    old.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}]}]
    with pytest.raises(OutputError, match="bioformats2raw"):
        open_probability_store(tmp_path / "old.ome.zarr")


def test_ome_xml_keeps_names_xml_can_hold_and_replaces_the_rest():
    names = ['T"E <&>', "NE\nC", "bell\x07", "東京"]
    xml = probability_ome_xml("s\x00lide", names, [(1, 2, 3)] * 4, (4, 5, 6), (1.0, 1.0))
    image = ome_types.from_xml(xml, validate=True).images[0]
    assert image.name == "s\ufffdlide"
    assert [c.name for c in image.pixels.channels] == ['T"E <&>', "NE\nC", "bell\ufffd", "東京"]
