"""What a local slide path leads to: the regular file a backend opens, or one clear error.

Kept apart from opening: a missing file, a broken link, a DICOM folder and a pipe each need
a different fix, and none of them should reach a backend (a FIFO would block it forever).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from wsi_segment.errors import SlideError
from wsi_segment.wsi.slide_folder import slide_file_of_folder


def local_slide_file(path: str) -> str:
    """The resolved regular file `path` names (a DICOM slide folder: one of its files)."""
    p = Path(path)
    if not p.exists():
        _refuse_broken_link(path)
        raise SlideError(
            f"{path}: no such file; check the path (give a slide file, or a URL such as "
            "s3://bucket/slide.svs)"
        )
    if p.is_dir():  # a DICOM slide folder opens by one of its files
        p = Path(slide_file_of_folder(p))
    if not p.is_file():  # a FIFO would block the readers forever
        raise SlideError(
            f"{path}: not a regular file (a pipe, socket or device); pass the slide file"
        )
    return str(p.resolve())


def _refuse_broken_link(path: str) -> None:
    """A path that does not resolve because of a link says so: a loop, or a link to nothing,
    is not the same fix as a mistyped name."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SlideError(
                f"{path}: symbolic link loop (the link leads back to itself); point the link "
                "at the slide file, or pass the slide file itself"
            ) from exc
    if os.path.islink(path):
        raise SlideError(
            f"{path}: symbolic link to {os.readlink(path)!r}, which does not exist; point the "
            "link at the slide file, or pass the slide file itself"
        )
