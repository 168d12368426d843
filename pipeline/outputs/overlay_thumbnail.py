"""overlay-thumbnail.jpg: the overlay's small picture, what a card of report.html shows.

A run writes it beside overlay.png from the overlay it has just drawn (no decoding), so the
morning report of a thousand slides reads a few KB of JPEG per slide instead of decoding a
thousand PNGs. For a folder written before the run made one, the report makes the same
picture from overlay.png (`pipeline.outputs.report_thumbnails`): one definition of the
picture here, so both give the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

from PIL import Image

THUMBNAIL_PX = 320  # the most on the longer side: a card's 160 px box on a high-density screen
JPEG_QUALITY = 80


def thumbnail_factor(size_wh: tuple[int, int]) -> int:
    """The whole factor the overlay shrinks by: the least that brings its longer side to at
    most `THUMBNAIL_PX` (1 for a picture already that small)."""
    return max(1, math.ceil(max(size_wh) / THUMBNAIL_PX))


def thumbnail_size(size_wh: tuple[int, int]) -> tuple[int, int]:
    """The thumbnail's (width, height) for an overlay of `size_wh`: each side divided by the
    factor, rounded up (a box reduction keeps the partial last box)."""
    factor = thumbnail_factor(size_wh)
    return (math.ceil(size_wh[0] / factor), math.ceil(size_wh[1] / factor))


def shrink_overlay(overlay: Image.Image) -> Image.Image:
    """The thumbnail's pixels: a whole-factor box reduction of the overlay (the cheapest
    resampling that still averages every pixel, legend included)."""
    return overlay.convert("RGB").reduce(thumbnail_factor(overlay.size))


def save_thumbnail(overlay: Image.Image, out: str | Path | BinaryIO) -> None:
    """Write the overlay's thumbnail as JPEG to a path or an open binary file. No metadata
    and fixed settings: the same overlay gives the same bytes."""
    shrink_overlay(overlay).save(out, "JPEG", quality=JPEG_QUALITY, optimize=False)
