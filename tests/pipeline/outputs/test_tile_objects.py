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

SLIDE = (240, 160)  # the store's 30 x 20 output px of 8 level-0 px: a slide they fit exactly


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
    feats = list(iter_tile_features(store, 10, SLIDE))
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
    assert len(list(iter_tile_features(store, 10, SLIDE, min_tissue_fraction=0.0))) == 5


def test_gated_tissue_is_an_unclassified_tile_not_glass(store):
    """Where the gate ruled every class out the probabilities are all 0, yet it is tissue:
    the tile is there, Unclassified (dark grey); half ruled out, half A at 0.5 is
    Unclassified too (its fraction 0.5 counts as probability 1 on its pixels: 0.5 > 0.25)."""
    _, gated, half, _ = list(iter_tile_features(store, 10, SLIDE))
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
    assert write_tile_geojson(store, path, 10, SLIDE) == 4
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4
    assert not list(tmp_path.glob(".*"))
    assert write_tile_geojson(store, path, 1000, SLIDE, min_tissue_fraction=0.9) == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    with pytest.raises(ConfigError):
        list(iter_tile_features(store, 0, SLIDE))


# A 5 x 4 output px raster of 8 level-0 px over a 34 x 28 px slide: its edge cuts the last
# column at 34 / 8 = 4.25 (a quarter on the slide) and the last row at 28 / 8 = 3.5 (half).
EDGE_SLIDE, EDGE_OFFSET = (34, 28), (-100.0, 50.0)
A, B, U, _ = 0, 1, UNCLASSIFIED, NODATA
EDGE_IDS = [
    [A, A, A, B, B],
    [A, _, U, B, _],
    [A, A, _, B, U],
    [A, _, _, B, B],
]


@pytest.fixture
def edge_store(tmp_path):
    """Class probability 1 where the class is, 0 elsewhere and on Unclassified tissue."""
    path = tmp_path / "edge.ome.zarr"
    ids = np.array(EDGE_IDS, dtype=np.uint8)
    probs = np.stack([np.where(ids == c, 255, 0) for c in (A, B)]).astype(np.uint8)
    arr = create_probability_store(
        path, ["A", "B"], [(255, 0, 0), (0, 0, 255)], (4, 5), (4, 5), 4.0, 8.0, EDGE_OFFSET
    )
    arr[:] = probs
    create_label_image(path)[:] = label_values(ids)
    return path


def test_edge_squares_are_cut_at_the_slide_and_measured_on_it(edge_store):
    """The raster's last column and row reach past the slide's edge: the squares of 3 output
    px there end at the slide's edge (level-0 34 and 28, shifted by the offset), and their
    fractions count each pixel by its part on the slide (a quarter of the last column, half
    of the last row). They used to end at 40 and 32 with every pixel counted whole: the
    right square's tissue fraction 5/6 and Unclassified 1/5 instead of 3.5/3.75 and
    0.25/3.5. The square inside is as it always was."""
    inside, right, bottom, corner = iter_tile_features(edge_store, 3, EDGE_SLIDE)
    rings = [f["geometry"]["coordinates"] for f in (inside, right, bottom, corner)]
    assert rings == [
        [[[-100, 50], [-76, 50], [-76, 74], [-100, 74], [-100, 50]]],
        [[[-76, 50], [-66, 50], [-66, 74], [-76, 74], [-76, 50]]],
        [[[-100, 74], [-76, 74], [-76, 78], [-100, 78], [-100, 74]]],
        [[[-76, 74], [-66, 74], [-66, 78], [-76, 78], [-76, 74]]],
    ]
    measured = [f["properties"]["measurements"] for f in (inside, right, bottom, corner)]
    assert measured == [
        {"A probability": 6 / 7, "B probability": 0.0, "Unclassified fraction": 1 / 7,
         "Tissue fraction": 7 / 9},
        {"A probability": 0.0, "B probability": 0.8, "Unclassified fraction": 1 / 14,
         "Tissue fraction": 14 / 15},
        {"A probability": 1.0, "B probability": 0.0, "Unclassified fraction": 0.0,
         "Tissue fraction": 1 / 3},
        {"A probability": 0.0, "B probability": 1.0, "Unclassified fraction": 0.0,
         "Tissue fraction": 1.0},
    ]  # fmt: skip
    # a slide the raster fits exactly (40 x 32): nothing cut, the inside square the same
    uncut = list(iter_tile_features(edge_store, 3, (40, 32)))
    assert uncut[0] == inside and uncut[1]["properties"]["measurements"]["Tissue fraction"] == 5 / 6


def test_a_runs_squares_end_at_the_slides_edge(tmp_path, tiny_model_dir):
    """CMU-1-Small-Region (2220 x 2967 px) at the tiny model's 16.03 level-0 px per output
    px is a raster of 139 x 186 output px (2228.5 x 2981.8): the last column and row of
    squares hung 8.5 and 14.8 px off the slide, past the image QuPath shows. With every tile
    analysed (tissue "all") both edges have squares (8 output px each: 18 columns, 24 rows):
    those 41 end at the slide's edge, the others are as they were, byte for byte."""
    from tests.conftest import CMU_SLIDE
    from wsi_segment.pipeline.output_files import STORE_NAME
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    params = SegmentParams(
        model_dir=tiny_model_dir,
        device="cpu",
        tissue="all",
        extra_outputs=frozenset({"tile_objects"}),
    )
    result = segment_slide(str(CMU_SLIDE), tmp_path, params)
    written = json.loads((result.out_dir / "tiles.geojson").read_text())["features"]
    # the squares as they were: a slide past the raster's end cuts nothing
    uncut = list(iter_tile_features(result.out_dir / STORE_NAME, 8, (10**6, 10**6)))
    assert len(written) == len(uncut) == 18 * 24
    width, height = 2220, 2967
    cut = 0
    for new, old in zip(written, uncut, strict=True):
        (x_a, y_a), _, (x_b, y_b), *_ = new["geometry"]["coordinates"][0]
        (was_xa, was_ya), _, (was_xb, was_yb), *_ = old["geometry"]["coordinates"][0]
        assert 0 <= x_a < x_b <= width and 0 <= y_a < y_b <= height
        assert (x_a, y_a, x_b, y_b) == (was_xa, was_ya, min(was_xb, width), min(was_yb, height))
        if (x_b, y_b) == (was_xb, was_yb):
            assert new == old
        else:
            cut += 1
    assert cut == 18 + 24 - 1
