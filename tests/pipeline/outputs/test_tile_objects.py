"""Per-tile QuPath objects: exact means, level-0 squares, strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import box, shape

from wsi_segment.errors import ConfigError
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
    return path


def test_tile_features(store):
    feats = list(iter_tile_features(store, 10))
    assert len(feats) == 2
    first, second = feats
    assert first["properties"]["objectType"] == "tile"
    assert first["properties"]["classification"] == {"name": "A", "color": [255, 0, 0]}
    m = first["properties"]["measurements"]
    assert m == pytest.approx({"A probability": 0.8, "B probability": 0.2, "Tissue fraction": 1.0})
    assert shape(first["geometry"]).equals(box(-100, 50, -20, 130))
    assert second["properties"]["classification"]["name"] == "B"
    assert shape(second["geometry"]).equals(box(60, 130, 140, 210))
    assert len(list(iter_tile_features(store, 10, min_tissue_fraction=0.0))) == 3


def test_write_tile_geojson(store, tmp_path):
    path = tmp_path / "tiles.geojson"
    assert write_tile_geojson(store, path, 10) == 2
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    assert not list(tmp_path.glob(".*"))
    assert write_tile_geojson(store, path, 1000, min_tissue_fraction=0.9) == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    with pytest.raises(ConfigError):
        list(iter_tile_features(store, 0))
