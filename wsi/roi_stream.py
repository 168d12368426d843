"""The objects of a QuPath export read in blocks, so the cells of an "All objects" export
cost a glance each instead of a decoded object each.

QuPath writes each object as `{"type":"Feature","id":...,"geometry":...,"properties":
{"objectType":...}}` (`PathObjectTypeAdapter`, compact or pretty-printed), in a
FeatureCollection, a bare array, or alone. Its `objectType` comes after the geometry, so a
parser that builds objects would build every cell's polygons before learning it is a cell.
Here the stream is cut at each `{"type":"Feature"` (a nested object never starts so in a
QuPath file, and inside a string its quotes would be escaped), and an object whose one
`"objectType"` says detection, cell, tile or root is counted, never decoded; every other
object is decoded with `json` and classified as before. Memory is one block plus the
largest object, whatever the file's size.

A stream that does not open like QuPath's forms is `NotStreamable`: the caller reads it
whole (other tools' GeoJSON, older QuPath files, bare geometries). An object that is
counted is not checked for JSON syntax; the file's end is (a truncated export is refused).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Protocol

from wsi_segment.errors import BrokenExport, NotStreamable

BLOCK = 8 << 20  # bytes read at a time
_MAX_PREFIX = 1 << 16  # QuPath's opening is a few dozen bytes; more: not its form
_START = re.compile(rb'\{\s*"type"\s*:\s*"Feature"\s*[,}]')
_OPENINGS = {
    "array": re.compile(rb"\s*\[\s*"),
    "collection": re.compile(
        rb'\s*\{\s*"type"\s*:\s*"FeatureCollection"\s*,\s*"features"\s*:\s*\[\s*'
    ),
    "feature": re.compile(rb"\s*"),
}
_SEPARATOR = re.compile(rb"\s*,\s*")
_OBJECT_TYPE = re.compile(rb'"objectType"\s*:\s*"([^"\\]*)"')
# objects that are never regions (wsi.roi_file._classify), by their objectType
COUNTED_TYPES = ("detection", "cell", "tile", "root")


class ByteStream(Protocol):
    """What the reader needs of a file, a gzip stream or a zip entry."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def stream_objects(stream: ByteStream, block: int = BLOCK) -> Iterator[dict[str, Any] | str]:
    """Each object of a QuPath export in file order: the decoded Feature, or for one that is
    not a region the kind to count it as ("cell", ...). Raises `NotStreamable` before
    yielding anything when the stream is not in QuPath's form, `BrokenExport` for a cut or
    broken file; read errors (gzip, zip) propagate."""
    buf, form, first = _opening(stream, block)
    offset = 0  # of buf[0] in the stream, for messages
    while True:
        starts = [m.start() for m in _START.finditer(buf, first + 1)]
        for end in starts:
            span = buf[first:end]
            sep = _SEPARATOR.search(span, len(span.rstrip()) - 1)
            if form == "feature" or sep is None or sep.end() != len(span):
                raise BrokenExport(f"objects not separated by ',' near byte {offset + end}")
            yield from _object(span[: sep.start()], offset + first)
            first = end
        more = stream.read(block)
        if not more:
            break
        offset += first
        buf, first = buf[first:] + more, 0
    yield from _last(buf[first:], form, offset + first)


def _opening(stream: ByteStream, block: int) -> tuple[bytes, str, int]:
    """(buffer, form, where the first object starts); NotStreamable if not QuPath's."""
    buf = stream.read(block)
    if buf.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        buf = buf[3:]
    while (m := _START.search(buf)) is None and len(buf) < _MAX_PREFIX:
        more = stream.read(block)
        if not more:
            break
        buf += more
    if m is None:
        raise NotStreamable
    prefix = buf[: m.start()]
    for form, opening in _OPENINGS.items():
        if opening.fullmatch(prefix):
            return buf, form, m.start()
    raise NotStreamable


def _counted_kind(text: bytes) -> str | None:
    """The kind to count an object as when its one objectType says it is no region."""
    kinds = _OBJECT_TYPE.findall(text)
    if len(kinds) == 1:
        kind = str(kinds[0].decode("ascii", "replace"))
        if kind in COUNTED_TYPES:
            return kind
    return None


def _object(text: bytes, at: int) -> Iterator[dict[str, Any] | str]:
    """The kind to count the object as, or the decoded values of the span (a QuPath
    object; in a bare array other values may follow it, e.g. a bare geometry)."""
    kind = _counted_kind(text)
    if kind is not None:
        yield kind
        return
    try:
        values = json.loads(b"[" + text + b"]")
    except ValueError as exc:
        raise BrokenExport(f"{_reason(exc)} in the object at byte {at}") from None
    yield from _dicts(values, at)


def _last(text: bytes, form: str, at: int) -> Iterator[dict[str, Any] | str]:
    """The last object (and any values after it in a bare array), once what closes the
    file after it is checked."""
    opening = {"array": b"[", "collection": b'{"features":[', "feature": b""}[form]
    try:
        doc = json.loads(opening + text)
    except ValueError as exc:
        raise BrokenExport(
            f"{_reason(exc)} in the last object, at byte {at} (cut short?)"
        ) from None
    values = doc["features"] if form == "collection" else doc if form == "array" else [doc]
    kind = _counted_kind(text)
    if kind is not None and len(values) == 1:
        yield kind
        return
    yield from _dicts(values, at)


def _dicts(values: list[Any], at: int) -> Iterator[dict[str, Any]]:
    for value in values:
        if not isinstance(value, dict):
            raise BrokenExport(f"a value near byte {at} is not a JSON object")
        yield value


def _reason(exc: ValueError) -> str:
    return str(exc.args[0]) if exc.args else str(exc)
