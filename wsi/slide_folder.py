"""A folder passed as a slide: a DICOM slide opens by one of its files; anything else is
refused with the file to pass.

A DICOM whole-slide image is a folder of `.dcm` files (one per pyramid level and associated
image, one series). openslide opens the slide from any file of the series and finds the
others beside it, so the folder itself is taken as the slide.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from wsi_segment.errors import SlideError


def slide_file_of_folder(folder: Path) -> str:
    """The file to open a DICOM slide folder by: its largest `.dcm` file that openslide
    takes for DICOM (the full-resolution level, most likely; openslide reads the slide's
    other files from beside it). Else a `SlideError` saying what to pass instead (for MRXS,
    the .mrxs file beside its data folder)."""
    try:
        dcm = [f for f in folder.iterdir() if f.name.lower().endswith(".dcm") and f.is_file()]
    except OSError:
        dcm = []
    if dcm:
        import openslide

        for f in sorted(dcm, key=lambda f: (-f.stat().st_size, f.name)):
            with contextlib.suppress(Exception):  # openslide raises several types
                if openslide.OpenSlide.detect_format(str(f)) == "dicom":
                    return str(f.resolve())
        raise SlideError(
            f"{folder}: is a directory whose {len(dcm)} .dcm file(s) openslide does not read "
            "as a DICOM whole-slide image; pass the slide file itself (a DICOM slide: a "
            "folder of VL Whole Slide Microscopy .dcm files)"
        )
    mrxs = folder.parent / f"{folder.name}.mrxs"
    fix = (
        f"it is the data folder of an MRXS slide: pass {mrxs}"
        if mrxs.is_file()
        else ("pass the slide file itself (for MRXS, the .mrxs file next to this folder)")
    )
    raise SlideError(f"{folder}: is a directory, not a slide; {fix}")
