"""The objects of a QuPath GeoJSON export, whatever holds them: a plain file, a gzipped one
(QuPath's "Compression"), or each `.geojson` / `.json` (or gzipped) entry of a zip, as QuPath's
importer (`PathIO.readObjects`) reads them, telling gzip and zip by their first bytes. Each
entry is streamed in blocks where it is in QuPath's own form (`wsi.roi_stream`), else read
whole as any GeoJSON. Which of the objects are regions is `wsi.roi_file`'s to decide.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from wsi_segment.errors import BrokenExport, NotStreamable, RoiError
from wsi_segment.wsi.roi_stream import ByteStream, stream_objects

POLYGONAL = ("Polygon", "MultiPolygon")
_GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString", *POLYGONAL)
_ZIP_ENTRIES = (".geojson", ".json", ".geojson.gz", ".json.gz")
_GZIP = b"\x1f\x8b"
_ZIP = b"PK\x03\x04"
FIX = (
    "draw the regions in QuPath with the rectangle, ellipse, polygon or brush tool and "
    "export them with File > Export objects as GeoJSON"
)

Opener = Callable[[], ByteStream]


def roi_sources(path: Path, stack: contextlib.ExitStack) -> list[tuple[str, Opener, str]]:
    """(entry name, opener of its decompressed bytes, "gzip" / "zip" / "") for the file,
    or for each GeoJSON entry of a zip, telling gzip and zip by their first bytes."""
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a folder: its own error below
            # a pipe would block the run, a device (/dev/zero) be read until memory runs out
            raise RoiError(
                f"{path}: not a regular file (a pipe, socket or device); --roi takes a "
                "GeoJSON file exported by QuPath"
            )
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise RoiError(f"{path}: ROI file not found; check the --roi path") from None
    except IsADirectoryError:
        raise RoiError(
            f"{path}: is a folder; --roi takes a GeoJSON file exported by QuPath"
        ) from None
    except OSError as exc:
        raise RoiError(f"{path}: cannot read the ROI file ({exc.strerror})") from None
    if head[:2] == _GZIP:
        with _reading(path, "gzip"), gzip.open(path, "rb") as g:
            inner = g.read(4)
        if inner != _ZIP:
            return [(path.name, lambda: gzip.open(path, "rb"), "gzip")]
        with _reading(path, "gzip"), gzip.open(path, "rb") as g:  # a gzipped zip: rare, small
            archive: Any = io.BytesIO(g.read())
    elif head == _ZIP:
        archive = path
    else:
        return [(path.name, lambda: open(path, "rb"), "")]
    with _reading(path, "zip"):
        zf = stack.enter_context(zipfile.ZipFile(archive))
        names = sorted(
            i.filename
            for i in zf.infolist()
            if not i.is_dir() and i.filename.lower().endswith(_ZIP_ENTRIES)
        )
    if not names:
        raise RoiError(
            f"{path}: the zip holds no .geojson entry; export with File > Export "
            "objects as GeoJSON (with or without 'Compress data (zip)')"
        )
    return [(n, partial(_zip_entry, zf, n), "zip") for n in names]


def _zip_entry(zf: zipfile.ZipFile, name: str) -> ByteStream:
    """A zip entry's bytes, gunzipped when the entry is gzip (QuPath reads both)."""
    stream = zf.open(name)
    if isinstance(stream, zipfile.ZipExtFile) and stream.peek(2)[:2] == _GZIP:
        return gzip.GzipFile(fileobj=stream)
    return stream


@contextlib.contextmanager
def _reading(path: Path, kind: str) -> Iterator[None]:
    """Read errors as one `RoiError`: of a compressed file (QuPath's "Compression"), or
    of the file itself."""
    try:
        yield
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        if not kind:
            raise RoiError(f"{path}: cannot read the ROI file ({exc})") from None
        raise RoiError(f"{path}: broken {kind} file ({exc}); export it again") from None


def roi_objects(
    path: Path, entry: str, opener: Opener, kind: str
) -> Iterator[dict[str, Any] | str]:
    """The entry's objects (a dict to classify, or the kind of one counted undecoded),
    streamed when the entry is in QuPath's form, else read whole as any GeoJSON."""
    where = "" if entry == path.name else f" (entry {entry})"
    try:
        with _reading(path, kind), contextlib.closing(opener()) as stream:
            yield from stream_objects(stream)
        return
    except NotStreamable:
        pass
    except BrokenExport as exc:
        raise RoiError(f"{path}: not valid JSON{where} ({exc}); {FIX}") from None
    with _reading(path, kind), contextlib.closing(opener()) as stream:
        data = stream.read()
    found = geojson_features(_parse(path, entry, _decode(path, entry, data)))
    if found is None:
        raise RoiError(
            f"{path}: not QuPath GeoJSON (expected a FeatureCollection, a list of "
            f"Features, a Feature or a geometry); {FIX}"
        )
    yield from found


def _decode(path: Path, entry: str, data: bytes) -> str:
    where = path.name if entry == path.name else f"{path.name}:{entry}"
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RoiError(
            f"{path}: {where} is not UTF-8 text, so not a GeoJSON export; {FIX}"
        ) from None


def _parse(path: Path, entry: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        where = "" if entry == path.name else f" (entry {entry})"
        raise RoiError(f"{path}: not valid JSON{where} ({exc}); {FIX}") from None


def geojson_features(doc: Any) -> list[dict[str, Any]] | None:
    """Features as `PathIO.readObjectsFromGeoJSON` finds them; None if there are none to find."""
    if isinstance(doc, list):
        out: list[dict[str, Any]] = []
        for item in doc:
            out.extend(geojson_features(item) or [])
        return out
    if not isinstance(doc, dict):
        return None
    kind = doc.get("type")
    if kind == "FeatureCollection":
        feats = doc.get("features")
        return [f for f in feats if isinstance(f, dict)] if isinstance(feats, list) else []
    if kind == "Feature":
        return [doc]
    if kind in _GEOMETRIES or kind == "GeometryCollection":
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    return None
