"""Refuse, up front, a slide whose declared size the file cannot back or we cannot read.

A slide declares its size in its header; nothing makes it true. A tiny single-level TIFF
can declare 10^6 x 10^6 pixels: tissue detection and the overlay would then decode a
thousand gigapixels (hours, for tiles that are not even stored), and `--tissue all` would
plan a chunk grid over all of it. Both limits are far beyond real scans: a single-level
100k x 100k px slide (10 gigapixels) passes, and JPEG does not compress a scan, glass
included, below ~0.01 bytes per pixel (we refuse below 0.0001).
"""

from __future__ import annotations

import os
from pathlib import Path

from wsi_segment.errors import SlideError
from wsi_segment.wsi.slide import Slide

THUMB_SIZE = 2048  # tissue detection's thumbnail (wsi.tissue.detect_tissue's default)
MAX_THUMBNAIL_GIGAPIXELS = 16.0  # what a thumbnail may decode (a single-level slide: all)
MAX_PIXELS_PER_BYTE = 10_000  # declared level-0 pixels per byte of the slide file
# formats whose pixels live in other files beside the one opened: no size check there
MULTI_FILE_SUFFIXES = frozenset({".mrxs", ".vms", ".vmu", ".vsi", ".dcm"})

PYRAMID_FIX = (
    "make a pyramid and run on that, e.g. `vips tiffsave SLIDE pyramid.tif --tile --pyramid "
    "--compression jpeg --Q 90 --tile-width 256 --tile-height 256` or `bfconvert "
    "-pyramid-resolutions 6 -pyramid-scale 2 -tilex 512 -tiley 512 SLIDE pyramid.ome.tiff`"
)


def check_slide_size(slide: Slide, thumb_size: int = THUMB_SIZE) -> None:
    """SlideError when the slide's declared size is beyond what its file holds, or when a
    thumbnail of it would decode more than MAX_THUMBNAIL_GIGAPIXELS (no coarse level)."""
    w, h = slide.dimensions
    path = Path(slide.path)
    if path.suffix.lower() not in MULTI_FILE_SUFFIXES and path.is_file():
        size = os.stat(path).st_size
        if w * h > MAX_PIXELS_PER_BYTE * max(1, size):
            raise SlideError(
                f"{slide.path}: declares {w} x {h} px ({w * h / 1e9:,.0f} gigapixels) in a "
                f"file of {size:,} bytes, far more than any scan compresses to: the file is "
                "damaged, or most of its tiles are not stored; copy it again from its source "
                "or re-export it from the scanner software"
            )
    level = slide.thumbnail_level(thumb_size)
    lw, lh = slide.level_dimensions[level]
    if lw * lh > MAX_THUMBNAIL_GIGAPIXELS * 1e9:
        raise SlideError(
            f"{slide.path}: has no level smaller than {lw} x {lh} px, so tissue detection and "
            f"the overlay would decode {lw * lh / 1e9:,.0f} gigapixels (the limit is "
            f"{MAX_THUMBNAIL_GIGAPIXELS:g}); " + PYRAMID_FIX.replace("SLIDE", slide.path)
        )
