"""overlay.png: colours blended over tissue only, legend present, real PNG on disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.outputs.chunk_summary import NODATA
from wsi_segment.pipeline.outputs.label_image import create_label_image, finalize_label_pyramid
from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store, finalize_pyramid
from wsi_segment.pipeline.outputs.overlay import label_thumbnail, sample_labels, write_overlay

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


def _store_with_labels(tmp_path, values: np.ndarray, probs: np.ndarray, min_size: int):
    """A real store: probabilities and the label image written chunk-aligned, pyramids built."""
    path = tmp_path / "p.ome.zarr"
    h, w = values.shape
    create_probability_store(path, NAMES, COLORS, (h, w), (64, 64), 4.0, 8.0)[:] = probs
    create_label_image(path)[:] = values
    finalize_label_pyramid(path, finalize_pyramid(path, min_size=min_size))
    return path


def test_label_thumbnail_reads_a_small_level_of_the_label_image(tmp_path):
    values = np.zeros((300, 200), dtype=np.uint8)  # 0 = no class
    values[40:, :100] = 3  # class 2
    values[40:, 100:] = 2  # class 1
    # probabilities that disagree with the labels everywhere: the overlay must not use them
    probs = np.zeros((4, 300, 200), dtype=np.uint8)
    probs[0] = 255
    path = _store_with_labels(tmp_path, values, probs, min_size=64)
    labels, factor = label_thumbnail(path, max_size=100)
    assert factor == 4 and labels.shape == (75, 50)
    assert (labels[:10] == NODATA).all()
    assert (labels[10:, :25] == 2).all() and (labels[10:, 25:] == 1).all()


def test_overlay_labels_where_every_stored_probability_is_zero(tmp_path):
    """The gate can leave a labelled pixel whose stored probabilities all round to 0: the
    overlay still shows its class, as the GeoJSON does (an argmax of the zarr did not)."""
    values = np.full((40, 60), 2, dtype=np.uint8)  # class 1 everywhere
    probs = np.zeros((4, 40, 60), dtype=np.uint8)  # ... with every probability stored as 0
    path = _store_with_labels(tmp_path, values, probs, min_size=256)
    labels, factor = label_thumbnail(path)
    assert factor == 1
    shown = sample_labels(labels, factor, 8.0, (480, 320), (32, 48))
    assert (shown == 1).all()


def test_sample_labels_takes_the_output_pixel_under_each_centre():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    # slide 40 x 30 level-0 px, 10 level-0 px per output px; a 2 x 2 picture: its pixel
    # centres fall at level-0 (10, 7.5) and (30, 22.5) -> output pixels (1, 0) and (3, 2)
    np.testing.assert_array_equal(
        sample_labels(labels, 1, 10.0, (40, 30), (2, 2)), [[1, 3], [9, 11]]
    )
    # the same points on a level of factor 2 (labels[::2, ::2] of the output grid)
    coarse = labels[::2, ::2]
    np.testing.assert_array_equal(
        sample_labels(coarse, 2, 10.0, (40, 30), (2, 2)), [[0, 2], [8, 10]]
    )


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(tmp_path, alpha):
    thumb, labels = _inputs()
    with pytest.raises(ConfigError):
        write_overlay(tmp_path / "o.png", thumb, labels, NAMES, COLORS, alpha=alpha)
