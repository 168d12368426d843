"""Cards' pictures for slides whose folder has no overlay-thumbnail.jpg, kept in `OUT/.report/`.

A run writes its overlay's thumbnail into the slide's folder (`pipeline.outputs.
overlay_thumbnail`), and the page shows that one. A folder written by an older version has
only overlay.png: its thumbnail (the same picture, a few KB of JPEG) is made here once, and
carries its overlay's modification time, so it is made again only when the overlay changed
(an `--overwrite` rerun), and a rebuild of the report after each slide of a batch decodes no
picture it decoded before. The folder is hidden like the runs' own `.<name>.partial`
folders: an output name never starts with '.', so no slide's folder can meet it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

from wsi_segment.errors import OutputError
from wsi_segment.pipeline.outputs.overlay_thumbnail import save_thumbnail
from wsi_segment.pipeline.outputs.shared_access import follow_folder

THUMBS_DIR = ".report"


def thumbnails_folder(out_root: Path) -> Path:
    """`OUT/.report`, made when missing; OutputError when something else is in the way."""
    folder = out_root / THUMBS_DIR
    if os.path.islink(folder) or (os.path.lexists(folder) and not folder.is_dir()):
        raise OutputError(
            f"{folder} is in the way (a link or a file, not the report's thumbnails folder); "
            "it is left as it is: move it away and rebuild the report with `wsi-segment report`"
        )
    try:
        folder.mkdir()
    except FileExistsError:
        return folder
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot be made ({exc}); check OUT's space and rights"
        ) from exc
    # the lab's users share OUT: the folder opens to them as OUT does (never to all for writing)
    os.chmod(folder, stat.S_IMODE(os.stat(out_root).st_mode) & ~stat.S_IWOTH)
    return folder


def thumbnail_name(name: str) -> str:
    """The thumbnail's file name for the output folder `name`."""
    return f"{name}.jpg"


def ensure_thumbnail(overlay: Path, folder: Path, name: str) -> str | None:
    """The thumbnail's path relative to OUT, made from `overlay` unless the one there is
    already of this overlay; None when the overlay cannot be read (the card says so)."""
    target = folder / thumbnail_name(name)
    relative = f"{THUMBS_DIR}/{thumbnail_name(name)}"
    try:
        stamp = os.stat(overlay).st_mtime_ns
        if not os.path.islink(target) and target.is_file() and target.stat().st_mtime_ns == stamp:
            return relative
        _save(read_overlay(overlay), target, stamp)
    except (OSError, ValueError, Image.DecompressionBombError, imagecodecs.PngError):
        return None
    return relative


def read_overlay(path: Path) -> Image.Image:
    """The overlay's pixels. Pillow reads the header (the size checked against its
    decompression-bomb limit); an 8-bit RGB PNG, what runs write, is then decoded by libpng
    through imagecodecs, in half the CPU time of Pillow's own decoder (decoding is nearly
    all of a picture's cost) and with the GIL released; Pillow decodes anything else."""
    with Image.open(path) as image:
        if image.format == "PNG" and image.mode == "RGB":
            pixels = imagecodecs.png_decode(path.read_bytes())
            if pixels.dtype == np.uint8 and pixels.shape == (image.height, image.width, 3):
                return Image.fromarray(pixels)
        return image.convert("RGB")


def _save(overlay: Image.Image, target: Path, stamp: int) -> None:
    """Write the overlay's thumbnail through a temporary file renamed over `target` (never
    through a link at it), stamped with the overlay's time."""
    if os.path.islink(target):
        raise OSError(f"{target} is a symbolic link")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        follow_folder(fd, target.parent)  # mkstemp makes it 0600: the lab's users see it too
        with os.fdopen(fd, "wb") as f:
            save_thumbnail(overlay, f)
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
