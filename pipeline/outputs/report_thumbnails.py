"""Small pictures of each slide's overlay for report.html, kept beside it in `OUT/.report/`.

A card shows a thumbnail (a few KB of JPEG) and links the full `overlay.png`, so the page
opens fast with a thousand slides. A thumbnail is made once: it carries its overlay's
modification time, and is made again only when the overlay changed (an `--overwrite`
rerun), so rebuilding the report after each slide of a batch costs that slide's picture.
The folder is hidden like the runs' own `.<name>.partial` folders: an output name never
starts with '.', so no slide's folder can meet it.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import tempfile
from pathlib import Path

from PIL import Image

from wsi_segment.errors import OutputError
from wsi_segment.pipeline.outputs.shared_access import follow_folder

THUMBS_DIR = ".report"
THUMB_SIZE = 320  # px, the most on the longer side: a card's picture on a high-density screen
JPEG_QUALITY = 80


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
        with Image.open(overlay) as image:
            # a whole-factor box reduction: the cheapest resampling (decoding is the cost)
            small = image.convert("RGB").reduce(math.ceil(max(image.size) / THUMB_SIZE))
        _save(small, target, stamp)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return relative


def _save(image: Image.Image, target: Path, stamp: int) -> None:
    """Write the JPEG through a temporary file renamed over `target` (never through a link
    at it), stamped with the overlay's time."""
    if os.path.islink(target):
        raise OSError(f"{target} is a symbolic link")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        follow_folder(fd, target.parent)  # mkstemp makes it 0600: the lab's users see it too
        with os.fdopen(fd, "wb") as f:
            image.save(f, "JPEG", quality=JPEG_QUALITY, optimize=False)
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
