"""The class map as an NGFF 0.4 label image: real zarr stores, read back with ome-zarr-py."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v04 import Image
from ome_zarr_models.v04.image_label import ImageLabel

from wsi_segment.errors import OutputError
from wsi_segment.models.labels import NODATA, UNCLASSIFIED
from wsi_segment.pipeline.outputs import label_image
from wsi_segment.pipeline.outputs.label_image import (
    class_ids,
    create_label_image,
    finalize_label_pyramid,
    label_image_path,
    label_level0_path,
    label_values,
    open_label_levels,
)
from wsi_segment.pipeline.outputs.ome_zarr import (
    create_probability_store,
    finalize_pyramid,
    image_path,
)

NAMES = ["TE", "NEC", "LYM", "TAS"]
COLORS = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "probabilities.ome.zarr"
    create_probability_store(path, NAMES, COLORS, (75, 101), (16, 16), (2.0, 2.5), 8.0, name="s")
    arr = create_label_image(path)
    values = np.random.default_rng(1).integers(0, 5, (75, 101), dtype=np.uint8)
    for y in range(0, 75, 16):  # chunk-aligned blocks, as the inference writers write them
        for x in range(0, 101, 16):
            arr[y : y + 16, x : x + 16] = values[y : y + 16, x : x + 16]
    return path, values


def test_values_are_class_plus_one_255_unclassified_and_zero_for_no_class():
    labels = np.array([[0, 3, NODATA], [1, 2, NODATA], [UNCLASSIFIED, 0, 2]], dtype=np.uint8)
    values = label_values(labels)
    np.testing.assert_array_equal(values, [[1, 4, 0], [2, 3, 0], [255, 1, 3]])
    np.testing.assert_array_equal(class_ids(values), labels)


def test_level0_shares_the_probability_chunks(store):
    path, values = store
    arr = zarr.open_array(label_level0_path(path), mode="r")
    assert arr.shape == (75, 101) and arr.chunks == (16, 16) and arr.dtype == np.uint8
    assert arr.fill_value == 0
    np.testing.assert_array_equal(arr[:], values)


@pytest.mark.parametrize("in_memory_bytes", [1 << 30, 0], ids=["in-memory", "block-by-block"])
def test_pyramid_is_nearest_with_the_probability_level_count(store, monkeypatch, in_memory_bytes):
    path, values = store
    monkeypatch.setattr(label_image, "IN_MEMORY_BYTES", in_memory_bytes)
    n = finalize_pyramid(path, min_size=16)
    finalize_label_pyramid(path, n)
    levels = open_label_levels(path)
    assert [lv.shape for lv in levels] == [(75, 101), (38, 51), (19, 26), (10, 13)]
    for level, arr in enumerate(levels):
        f = 2**level
        np.testing.assert_array_equal(arr[:], values[::f, ::f])
    finalize_label_pyramid(path, 2)  # a rerun with fewer levels drops the stale ones
    assert len(open_label_levels(path)) == 2
    assert "2" not in zarr.open_group(label_image_path(path), mode="r")


def test_metadata_exact_and_valid(store):
    path, _ = store
    finalize_label_pyramid(path, finalize_pyramid(path, min_size=16))
    labels_group = zarr.open_group(image_path(path) / "labels", mode="r")
    assert labels_group.attrs["labels"] == ["classes"]
    attrs = zarr.open_group(label_image_path(path), mode="r").attrs.asdict()
    image_label = attrs["image-label"]
    assert image_label["version"] == "0.4"
    assert image_label["colors"] == [
        {"label-value": 0, "rgba": [0, 0, 0, 0]},
        {"label-value": 1, "rgba": [205, 51, 51, 255]},
        {"label-value": 2, "rgba": [0, 255, 0, 255]},
        {"label-value": 3, "rgba": [65, 105, 225, 255]},
        {"label-value": 4, "rgba": [255, 165, 0, 255]},
        {"label-value": 255, "rgba": [64, 64, 64, 255]},
    ]
    assert image_label["properties"] == [{"label-value": 0, "class": "no class"}] + [
        {"label-value": k + 1, "class": name} for k, name in enumerate(NAMES)
    ] + [{"label-value": 255, "class": "Unclassified"}]
    assert image_label["source"] == {"image": "../../"}
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert ms["datasets"][2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [10.0, 8.0]}
    ]
    assert attrs["wsi_segment"]["no_class_value"] == 0
    assert attrs["wsi_segment"]["unclassified_value"] == 255
    ImageLabel.from_zarr(zarr.open_group(label_image_path(path), mode="r"))
    image = Image.from_zarr(zarr.open_group(image_path(path), mode="r"))
    assert image.labels is not None and image.labels.attributes.labels == ["classes"]


def test_ome_zarr_reader_finds_the_labels_with_colours_and_classes(store):
    path, values = store
    finalize_label_pyramid(path, finalize_pyramid(path, min_size=16))
    nodes = list(Reader(parse_url(str(image_path(path))))())
    (label,) = [n for n in nodes if "image-label" in n.zarr.root_attrs]
    np.testing.assert_array_equal(label.data[0].compute(), values)
    assert label.metadata["properties"] == {
        **{k: {"class": n} for k, n in enumerate(["no class", *NAMES])},
        255: {"class": "Unclassified"},
    }
    assert label.metadata["color"][1] == pytest.approx([205 / 255, 51 / 255, 51 / 255, 1.0])


def test_a_store_without_labels_is_refused(tmp_path):
    path = tmp_path / "p.ome.zarr"
    create_probability_store(path, ["a"], [(1, 2, 3)], (10, 12), (8, 8), 4.0, 8.0)
    with pytest.raises(OutputError, match="no label image"):
        open_label_levels(path)
