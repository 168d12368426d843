"""The pixel samples a slide may store, and how they become the 8-bit RGB the model takes.

A brightfield scan stores 8-bit samples; some exports store 16-bit ones. Both readers give
the same 8-bit values for those: openslide goes through libtiff, which maps 16-bit colour
samples to 8 bits as `(n + 128) // 257` and grey ones by their high byte, and `to_uint8` does
the same for tiffslide. That is a fixed mapping, the same for every region, so a tile's
pixels never depend on what else was read with it. Any other sample type (floating point, 32-bit, signed) has no one mapping to
brightfield colours: such a slide is refused when it is opened, with the fix, rather than
read as a damaged file (openslide cannot decode it) or stretched region by region.
"""

from __future__ import annotations

import numpy as np

from wsi_segment.errors import SlideError

READABLE_SAMPLES = ("uint8", "uint16")
SAMPLES_FIX = (
    "wsi-segment reads brightfield slides of 8- or 16-bit unsigned samples; rescale it to "
    "8 bits per sample (e.g. in QuPath or Fiji) and save it as a pyramidal TIFF"
)


def check_samples(path: str, sample_dtype: str | None) -> None:
    """SlideError when the slide's samples (`sample_dtype`, None where the reader does not
    say: its vendor formats are 8-bit) are not ones `to_uint8` maps."""
    if sample_dtype is not None and sample_dtype not in READABLE_SAMPLES:
        raise SlideError(f"{path}: stores {sample_dtype} pixel samples; {SAMPLES_FIX}")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, samples): 8-bit samples as they are; 16-bit ones as libtiff (so openslide)
    maps them: grey (one or two samples) by the high byte, colour rounded."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16 and pixels.shape[-1] < 3:
        return (pixels >> 8).astype(np.uint8)
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ValueError(f"{pixels.dtype} samples reached the reader; check_samples refuses them")
