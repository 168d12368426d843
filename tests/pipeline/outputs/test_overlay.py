"""overlay.png: colours blended over tissue only, legend present, real PNG on disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store, finalize_pyramid
from wsi_segment.pipeline.outputs.overlay import (
    label_thumbnail,
    labels_from_probabilities,
    write_overlay,
)

NAMES = ["TE", "NEC", "LYM", "TAS"]
COLORS = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)]


def _inputs():
    thumb = np.full((80, 120, 3), 200, dtype=np.uint8)
    labels = np.full((40, 60), 255, dtype=np.uint8)  # half resolution: resized (nearest)
    labels[0:20, 0:30] = 0
    labels[20:40, 30:60] = 3
    return thumb, labels


def test_overlay_colours_and_legend(tmp_path):
    thumb, labels = _inputs()
    path = write_overlay(tmp_path / "overlay.png", thumb, labels, NAMES, COLORS, alpha=0.4)
    img = Image.open(path)
    assert img.format == "PNG" and img.mode == "RGB"
    assert img.height == 80 and img.width > 120  # legend strip to the right
    px = np.asarray(img)
    # 0.6 * 200 + 0.4 * colour, rounded
    np.testing.assert_array_equal(px[10, 10], [202, 140, 140])
    np.testing.assert_array_equal(px[60, 100], [222, 186, 120])
    np.testing.assert_array_equal(px[60, 10], [200, 200, 200])  # no tissue: untouched
    legend = px[:, 120:]
    for color in COLORS:  # a swatch of every class colour is drawn
        assert (legend == color).all(axis=-1).sum() >= 50


def test_labels_from_probabilities():
    probs = np.zeros((3, 2, 2), dtype=np.uint8)
    probs[:, 0, 0] = [10, 200, 30]
    probs[:, 0, 1] = [90, 0, 5]
    probs[:, 1, 0] = [0, 1, 2]
    np.testing.assert_array_equal(labels_from_probabilities(probs), [[1, 0], [2, 255]])


def test_label_thumbnail_reads_a_small_level(tmp_path):
    path = tmp_path / "p.ome.zarr"
    arr = create_probability_store(path, NAMES, COLORS, (300, 200), (64, 64), 4.0, 8.0)
    probs = np.zeros((4, 300, 200), dtype=np.uint8)
    probs[2, :, :100] = 255
    probs[1, :, 100:] = 255
    probs[:, :40] = 0  # no tissue
    arr[:] = probs
    finalize_pyramid(path, min_size=64)
    labels, factor = label_thumbnail(path, max_size=100)
    assert factor == 4 and labels.shape == (75, 50)
    assert (labels[:10] == 255).all()
    assert (labels[20:, :20] == 2).all() and (labels[20:, 30:] == 1).all()


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(tmp_path, alpha):
    thumb, labels = _inputs()
    with pytest.raises(ConfigError):
        write_overlay(tmp_path / "o.png", thumb, labels, NAMES, COLORS, alpha=alpha)
