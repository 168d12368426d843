"""An http(s) slide's file, opened for tiffslide once its server is found to serve it in parts.

Reading a whole-slide image fetches only the byte ranges of the tiles (and directories) it
needs. A server that ignores `Range:` and sends the whole file (Python's `http.server`, some
intranet servers) or says `Accept-Ranges: none` made fsspec fail every read past its first
block deep inside tifffile, reported as a corrupt TIFF ("corrupted tag list") or a region
"truncated or corrupt; copy it again": the lab went after the file, not the server.
"""

from __future__ import annotations

import os
from typing import Any

from wsi_segment.errors import NoByteRanges
from wsi_segment.wsi.shown_path import shown_slide_path
from wsi_segment.wsi.slide_path import url_storage_options


def http_slide_file(url: str) -> tuple[Any, str]:
    """The slide's fsspec file, opened as tiffslide opens a URL itself (one HEAD), and the
    name tiffslide gives it; NoByteRanges, naming the URL and the fix, when its server does
    not serve the byte ranges its reads need. The caller closes the file."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **url_storage_options(url))
    file = fs.open(path, "rb")
    try:
        why = _ranges_refused(file)
    except BaseException:
        file.close()
        raise
    if why is None:
        return file, os.path.basename(path)
    file.close()
    raise NoByteRanges(
        f"{shown_slide_path(url)}: the server does not serve byte ranges ({why}), which "
        "reading a whole-slide image over HTTP needs (each read fetches only the part of the "
        "file it uses); serve "
        "the slide from a server or object store that supports HTTP Range requests (S3 or "
        "another object store, nginx, Apache), or copy it to a local disk and give its path"
    )


def _ranges_refused(file: Any) -> str | None:
    """How the server of `file` (fsspec's HTTP file) refuses a byte range, or None: it
    serves one, or the slide is read whole by its first request (within fsspec's block,
    5 MB). Costs one request of one byte; `file` is left at its start, where tifffile
    takes the TIFF to begin."""
    if file.size is None:  # fsspec could only stream it, and a TIFF is read by seeking
        return "it says Accept-Ranges: none, or does not give the file's size"
    if file.size <= file.blocksize:
        return None
    file.seek(file.size - 1)
    try:
        file.read(1)  # the slide's last byte: one request with `Range:`
    except ValueError:  # fsspec's "doesn't appear to support range requests"
        return "asked for the slide's last byte, it sends the whole file"
    finally:
        file.seek(0)
    return None
