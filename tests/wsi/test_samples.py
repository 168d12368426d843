"""Pixel samples other than 8-bit (`wsi/samples.py`): 16-bit slides read the same through
both readers, with one fixed mapping (never stretched by each region's maximum, as the
tiffslide path did); sample types no reader maps (float, signed) are refused at open with
the fix, not read as a damaged file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_segment.errors import SlideError
from wsi_segment.wsi.samples import to_uint8
from wsi_segment.wsi.slide import open_slide


def _tiff(path: Path, pixels: np.ndarray, **kwargs: object) -> Path:
    tifffile.imwrite(path, pixels, tile=(256, 256), **kwargs)
    return path


def _noise(shape: tuple[int, ...], dtype: type, top: float) -> np.ndarray:
    return (np.random.default_rng(7).random(shape) * top).astype(dtype)


def test_16_bit_samples_map_as_libtiff_maps_them() -> None:
    values = np.array([0, 127, 129, 385, 32767, 65407, 65535], np.uint16)
    colour = np.repeat(values[:, None], 3, axis=1)[None]  # (1, 7, 3)
    assert to_uint8(colour)[0, :, 0].tolist() == [0, 0, 1, 1, 127, 255, 255]  # (n+128)//257
    assert to_uint8(values[None, :, None])[0, :, 0].tolist() == [0, 0, 0, 1, 127, 255, 255]


@pytest.mark.parametrize(
    ("shape", "photometric"), [((512, 512, 3), "rgb"), ((512, 512), "minisblack")]
)
def test_16_bit_slides_read_the_same_by_both_readers_in_any_region(
    tmp_path: Path, shape: tuple[int, ...], photometric: str
) -> None:
    path = _tiff(tmp_path / "u16.tif", _noise(shape, np.uint16, 65535), photometric=photometric)
    region = {
        name: open_slide(path, name, mpp=0.5).read_region((0, 0), 0, (512, 512))
        for name in ("openslide", "tiffslide")
    }
    assert np.array_equal(region["openslide"], region["tiffslide"])  # libtiff's bytes
    small = open_slide(path, "tiffslide", mpp=0.5).read_region((300, 40), 0, (20, 30))
    assert np.array_equal(small, region["tiffslide"][40:70, 300:320])  # no per-region scale


@pytest.mark.parametrize(("dtype", "top"), [(np.float32, 1.0), (np.int16, 3000)])
@pytest.mark.parametrize("backend", ["auto", "tiffslide"])
def test_samples_no_reader_maps_are_refused_at_open(
    tmp_path: Path, dtype: type, top: float, backend: str
) -> None:
    path = _tiff(tmp_path / "odd.tif", _noise((512, 512, 3), dtype, top), photometric="rgb")
    with pytest.raises(SlideError) as refused:
        open_slide(path, backend, mpp=0.5)
    text = str(refused.value)
    assert str(path) in text and f"stores {np.dtype(dtype).name} pixel samples" in text
    assert "8 bits per sample" in text and "corrupt" not in text


def test_grey_and_alpha_is_composited_over_white(tmp_path: Path) -> None:
    pixels = _noise((512, 512, 2), np.uint8, 255)
    path = _tiff(tmp_path / "ga.tif", pixels, photometric="minisblack", extrasamples=["unassalpha"])
    rgb = open_slide(path, "tiffslide", mpp=0.5).read_region((0, 0), 0, (512, 512))
    grey, alpha = pixels[..., 0].astype(np.int64), pixels[..., 1].astype(np.int64)
    expected = (grey * alpha + 255 * (255 - alpha) + 127) // 255
    assert rgb.shape == (512, 512, 3)
    assert np.array_equal(rgb, np.repeat(expected[..., None], 3, axis=2).astype(np.uint8))
