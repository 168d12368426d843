"""Which library reads a slide's chunks cheapest with the same pixels.

For plain tiled TIFFs (Aperio SVS, generic tiled TIFF) openslide and tiffslide decode the
same tiles; tiffslide (tifffile + imagecodecs) does it at about a third of openslide's CPU
cost and without openslide's RGBA round trip. `pipeline.prepare` asks before planning
chunk reads (`--backend auto`); thumbnails stay on openslide, whose thumbnails are faster.
"""

from __future__ import annotations

import numpy as np

from wsi_segment.wsi.slide import Slide, open_slide

FAST_READ_VENDORS = ("aperio", "generic-tiff")


def fast_read_backend(slide: Slide, level: int | None = None) -> str | None:
    """ "tiffslide" when it reads this openslide slide's pixels identically, else None.

    For plain tiled TIFFs (Aperio SVS, generic tiled TIFF) both libraries decode the same
    tiles; tiffslide (tifffile + imagecodecs) does it at ~1/3 of openslide's CPU cost and
    without openslide's RGBA round trip. Checked, not assumed: same level geometry and the
    same pixels in a probe region at the centre of the slide. `level`: chunk reads use only
    this level, so only levels 0..level must agree (tifffile takes the second page of an
    SVS for its thumbnail, so it may list fewer pyramid levels than openslide); None: all.
    """
    if getattr(slide, "backend", None) != "openslide":
        return None
    if getattr(slide, "vendor", None) not in FAST_READ_VENDORS:
        return None
    try:
        other = open_slide(slide.path, backend="tiffslide", mpp=None)
    except Exception:
        return None
    try:
        ours, theirs = tuple(slide.level_dimensions), tuple(other.level_dimensions)
        if level is not None:
            if not 0 <= level < len(ours):
                return None
            ours, theirs = ours[: level + 1], theirs[: level + 1]
        if ours != theirs:
            return None
        probe = level or 0
        ds = float(slide.level_downsamples[probe])
        if abs(float(other.level_downsamples[probe]) - ds) > 1e-6 * ds:
            return None
        w, h = slide.dimensions
        lw, lh = slide.level_dimensions[probe]
        size = (min(256, lw), min(256, lh))
        loc = (max(0, w // 2 - round(128 * ds)), max(0, h // 2 - round(128 * ds)))
        a = other.read_region(loc, probe, size)
        if not np.array_equal(a, slide.read_region(loc, probe, size)):
            return None
    except Exception:
        return None
    finally:
        other.close()
    return "tiffslide"
