"""Per-tile QuPath objects: exact means, level-0 squares, strict JSON; tissue from the label
image, so gated tissue (every probability 0) is an Unclassified tile, not glass."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import box, shape

from wsi_segment.errors import ConfigError
from wsi_segment.models.labels import NODATA, UNCLASSIFIED
from wsi_segment.pipeline.outputs.label_image import create_label_image, label_values
from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store
from wsi_segment.pipeline.outputs.tile_objects import iter_tile_features, write_tile_geojson


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "p.ome.zarr"
    arr = create_probability_store(
        path, ["A", "B"], [(255, 0, 0), (0, 0, 255)], (20, 30), (8, 8), 4.0, 8.0, (-100, 50)
    )
    probs = np.zeros((2, 20, 30), dtype=np.uint8)
    probs[0, :10, :10] = 204  # tile (0, 0): A 0.8, B 0.2 over all pixels
    probs[1, :10, :10] = 51
    probs[1, 10:, 20:] = 255  # tile (1, 2): B only, last column/row
    probs[0, 0, 10] = 255  # tile (0, 1): 1 % tissue, below the threshold
    arr[:] = probs
    ids = np.where(probs.max(axis=0) > 0, probs.argmax(axis=0), NODATA).astype(np.uint8)
    ids[10:, :10] = UNCLASSIFIED  # tile (1, 0): tissue the gate ruled out, probabilities 0
    ids[10:15, 10:20] = UNCLASSIFIED  # tile (1, 1): half tissue, all of it ruled out...
    ids[15:, 10:20] = 0  # ...and half class A at probability 0.5
    probs[0, 15:, 10:20] = 128
    arr[:] = probs
    create_label_image(path)[:] = label_values(ids)
    return path


def test_tile_features(store):
    feats = list(iter_tile_features(store, 10))
    assert len(feats) == 4
    first, _, _, last = feats
    assert first["properties"]["objectType"] == "tile"
    assert first["properties"]["classification"] == {"name": "A", "color": [255, 0, 0]}
    m = first["properties"]["measurements"]
    assert m == pytest.approx(
        {"A probability": 0.8, "B probability": 0.2, "Unclassified fraction": 0.0,
         "Tissue fraction": 1.0}
    )  # fmt: skip
    assert shape(first["geometry"]).equals(box(-100, 50, -20, 130))
    assert last["properties"]["classification"]["name"] == "B"
    assert shape(last["geometry"]).equals(box(60, 130, 140, 210))
    assert len(list(iter_tile_features(store, 10, min_tissue_fraction=0.0))) == 5


def test_gated_tissue_is_an_unclassified_tile_not_glass(store):
    """Where the gate ruled every class out the probabilities are all 0, yet it is tissue:
    the tile is there, Unclassified (dark grey); half ruled out, half A at 0.5 is
    Unclassified too (its fraction 0.5 counts as probability 1 on its pixels: 0.5 > 0.25)."""
    _, gated, half, _ = list(iter_tile_features(store, 10))
    assert shape(gated["geometry"]).equals(box(-100, 130, -20, 210))
    assert gated["properties"]["classification"] == {"name": "Unclassified", "color": [64, 64, 64]}
    assert gated["properties"]["measurements"] == {
        "A probability": 0.0, "B probability": 0.0, "Unclassified fraction": 1.0,
        "Tissue fraction": 1.0,
    }  # fmt: skip
    m = half["properties"]["measurements"]
    assert m == pytest.approx(
        {"A probability": 128 / 255 / 2, "B probability": 0.0, "Unclassified fraction": 0.5,
         "Tissue fraction": 1.0}
    )  # fmt: skip
    assert half["properties"]["classification"]["name"] == "Unclassified"


def test_write_tile_geojson(store, tmp_path):
    path = tmp_path / "tiles.geojson"
    assert write_tile_geojson(store, path, 10) == 4
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4
    assert not list(tmp_path.glob(".*"))
    assert write_tile_geojson(store, path, 1000, min_tissue_fraction=0.9) == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    with pytest.raises(ConfigError):
        list(iter_tile_features(store, 0))
