"""ROI files written the way QuPath writes them, for tests of `--roi`.

Each builder follows a named part of QuPath's source (qupath/qupath):

- Features: `qupath-core/.../io/QuPathTypeAdapters.java`, `PathObjectTypeAdapter.write`
  (0.4-0.6): key order `type`, `id` (the object's UUID), `geometry`, then `properties` with
  `objectType` ("annotation", "detection", "cell", "tile", "tmaCore"), `name`, `color`,
  `classification` ({"name", "color": [r, g, b]}), `isLocked` (only when locked),
  `isMissing` (TMA cores), `measurements` (name -> number), `metadata`; cells add
  `nucleusGeometry`.
- Geometry: `ROITypeAdapters` through JTS: rectangles, polygons, brush areas and ellipses
  (polygonised on export, `ExportObjectsCommand`) are Polygon or MultiPolygon with holes;
  point annotations are MultiPoint (Point for one point); line and polyline annotations
  are LineString.
- Files: `qupath-core/.../io/PathIO.java`, `exportObjectsAsGeoJSON`: a FeatureCollection
  (option FEATURE_COLLECTION, on by default in `ExportObjectsCommand`), else one Feature
  for one object or a bare array; a `.zip` path holds one entry `<name>.geojson`
  (`ZipOutputStream`), a `.gz` path is gzipped (`GZIPOutputStream`): the "Compression"
  choice None / ZIP / gzip of `ExportObjectsCommand` (0.5, 0.6). Compact JSON (`GsonTools`
  without pretty printing).
- Older files: QuPath 0.2 put the Java class in the feature `id` ("PathAnnotationObject",
  the `LEGACY_TYPE_IDS` of `PathObjectTypeAdapter`) with measurements as a list of
  {name, value}; `object_type` is the key QuPath wrote before `objectType` (the commented-
  out line in `PathObjectTypeAdapter.write`; its reader still accepts it, and `type`).
"""

from __future__ import annotations

import gzip
import json
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Coords = list[list[float]]


def _uuid(seed: str) -> str:
    """Stable ids: a test can name the object it expects back."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"qupath-test/{seed}"))


def rect(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    """A rectangle annotation's geometry (QuPath closes rings, starting top-left)."""
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in ring]]}


def feature(
    objtype: str,
    geometry: dict[str, Any] | None,
    *,
    seed: str,
    name: str | None = None,
    cls: str | None = None,
    color: Sequence[int] = (200, 0, 0),
    measurements: dict[str, float] | None = None,
    locked: bool = False,
    missing: bool | None = None,
) -> dict[str, Any]:
    """One object as `PathObjectTypeAdapter.write` (0.4-0.6) writes it."""
    props: dict[str, Any] = {"objectType": objtype}
    if name is not None:
        props["name"] = name
    if cls is not None:
        props["classification"] = {"name": cls, "color": list(color)}
    if locked:
        props["isLocked"] = True
    if missing is not None:
        props["isMissing"] = missing
    if measurements:
        props["measurements"] = measurements
    return {"type": "Feature", "id": _uuid(seed), "geometry": geometry, "properties": props}


def annotation(geometry: dict[str, Any], seed: str, **kw: Any) -> dict[str, Any]:
    return feature("annotation", geometry, seed=seed, **kw)


def detection(x: float, y: float, seed: str) -> dict[str, Any]:
    """A detection (e.g. from a pixel classifier's 'create detections'): a small polygon."""
    return feature("detection", rect(x, y, x + 8, y + 8), seed=seed, cls="Tumor")


def cell(x: float, y: float, seed: str) -> dict[str, Any]:
    """A cell from *Cell detection*: cell boundary, `nucleusGeometry`, measurements."""
    f = feature(
        "cell",
        rect(x, y, x + 12, y + 12),
        seed=seed,
        measurements={"Nucleus: Area": 28.5, "Cell: Area": 120.25},
    )
    f["nucleusGeometry"] = rect(x + 3, y + 3, x + 9, y + 9)
    return f


def _ring(cx: float, cy: float, r: float, n: int) -> Coords:
    import math

    ring = [
        [
            round(cx + r * math.cos(2 * math.pi * i / n), 2),
            round(cy + r * math.sin(2 * math.pi * i / n), 2),
        ]
        for i in range(n)
    ]
    return [*ring, ring[0]]


def traced_cell(x: float, y: float, seed: str, vertices: int = 32) -> dict[str, Any]:
    """A cell as *Cell detection* traces it: a many-vertex outline and nucleus, a class, and
    the dozens of measurements it adds (what makes an "All objects" export large)."""
    names = [
        f"{part}: {m}"
        for part in ("Nucleus", "Cell", "Cytoplasm")
        for m in (
            "Area",
            "Perimeter",
            "Circularity",
            "Max caliper",
            "Min caliper",
            "Eccentricity",
            "Hematoxylin OD mean",
            "Hematoxylin OD std dev",
            "Eosin OD mean",
            "Eosin OD std dev",
        )
    ]
    f = feature(
        "cell",
        {"type": "Polygon", "coordinates": [_ring(x, y, 6.5, vertices)]},
        seed=seed,
        cls="Tumor",
        measurements={n: round(1 + i * 0.731, 4) for i, n in enumerate(names)},
    )
    f["nucleusGeometry"] = {"type": "Polygon", "coordinates": [_ring(x, y, 3.2, vertices // 2)]}
    return f


def points(xy: Sequence[tuple[float, float]], seed: str) -> dict[str, Any]:
    """A point annotation (*Points* tool): MultiPoint, Point for a single one."""
    if len(xy) == 1:
        geometry = {"type": "Point", "coordinates": [float(xy[0][0]), float(xy[0][1])]}
    else:
        geometry = {"type": "MultiPoint", "coordinates": [[float(x), float(y)] for x, y in xy]}
    return annotation(geometry, seed, cls="Other")


def line(xy: Sequence[tuple[float, float]], seed: str) -> dict[str, Any]:
    """A line or polyline annotation: LineString."""
    geometry = {"type": "LineString", "coordinates": [[float(x), float(y)] for x, y in xy]}
    return annotation(geometry, seed)


def tma_core(x: float, y: float, d: float, name: str, missing: bool = False) -> dict[str, Any]:
    """A TMA core from *TMA dearrayer*: an ellipse polygonised, `isMissing` always written."""
    import math

    cx, cy, r = x + d / 2, y + d / 2, d / 2
    ring = [
        [cx + r * math.cos(2 * math.pi * i / 32), cy + r * math.sin(2 * math.pi * i / 32)]
        for i in range(32)
    ]
    ring.append(ring[0])
    return feature(
        "tmaCore", {"type": "Polygon", "coordinates": [ring]}, seed=name, name=name, missing=missing
    )


def legacy_02(geometry: dict[str, Any], cls: str | None = None) -> dict[str, Any]:
    """QuPath 0.2: the class name in `id`, packed `colorRGB`, measurements as a list."""
    props: dict[str, Any] = {"isLocked": False, "measurements": []}
    if cls is not None:
        props["classification"] = {"name": cls, "colorRGB": -3670016}
    return {
        "type": "Feature",
        "id": "PathAnnotationObject",
        "geometry": geometry,
        "properties": props,
    }


def with_type_key(f: dict[str, Any], key: str) -> dict[str, Any]:
    """The same object with its type under `object_type` or `type` (older files, other tools)."""
    props = dict(f["properties"])
    props[key] = props.pop("objectType")
    return {**f, "properties": props}


def _text(objects: list[dict[str, Any]], collection: bool, pretty: bool = False) -> str:
    if collection:
        doc: Any = {"type": "FeatureCollection", "features": objects}
    else:
        doc = objects[0] if len(objects) == 1 else objects
    if pretty:  # the dialog's "Pretty JSON": Gson's pretty printing, 2-space indents
        return json.dumps(doc, indent=2)
    return json.dumps(doc, separators=(",", ":"))


def export(
    path: Path, objects: list[dict[str, Any]], collection: bool = True, pretty: bool = False
) -> Path:
    """*File > Export objects as GeoJSON* to `.geojson`, or to `.zip` ("Compression: ZIP")."""
    text = _text(objects, collection, pretty)
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{path.stem}.geojson", text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def gzipped(path: Path, objects: list[dict[str, Any]]) -> Path:
    """*Export objects as GeoJSON* with "Compression: gzip" (`objects.geojson.gz`)."""
    path.write_bytes(gzip.compress(_text(objects, True).encode("utf-8"), mtime=0))
    return path


def two_cores(path: Path) -> Path:
    """An export of two overlapping area annotations named A1 and B2 (a TMA's cores, as the
    report tests read them back per region), written at `path`."""
    cores = [
        annotation(rect(0, 0, 600, 500), "core-a", name="A1"),
        annotation(rect(500, 400, 1100, 1100), "core-b", name="B2"),
    ]
    return export(path, cores)
