"""QuPath object exports read as QuPath's own importer reads them: which objects are regions.

QuPath writes objects (*File > Export objects as GeoJSON*, or `exportObjectsToGeoJson` in a
script) as a FeatureCollection, a bare array of Features (the dialog's "Export as
FeatureCollection" off), or one Feature. Its "Compression" choice (0.5, 0.6; a checkbox for
zip in 0.4) writes a `.zip` holding one `<name>.geojson` entry, or a gzipped `.geojson.gz`;
QuPath's importer (`PathIO.readObjects`) reads every `.geojson`, `.json` (or gzipped) entry of
a zip. `wsi.roi_sources` reads the same, telling gzip and zip by their first bytes; this
module decides which of the objects it finds are regions.

The object type is `properties.objectType` (QuPath 0.4+), else `object_type` or `type` (older
files and other tools), else the feature `id` of QuPath 0.2 (`PathAnnotationObject`, ...);
a feature without any is an annotation, as QuPath imports it. Regions are annotations with
an area (Polygon / MultiPolygon) and TMA cores that are not marked missing (a core is an area
a pathologist placed to be measured on its own). Detections, cells, tiles, point and line
annotations, annotations without area (an empty or zero-area polygon, by QuPath's rule:
`wsi.roi_area`) and missing cores are not regions: they are counted, never guessed at.
A missing core is kept apart (`RoiFile.missing_cores`), so the cohort table can give the
core its row, said missing, instead of leaving a gap in the array.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import shape

from wsi_segment.errors import RoiError
from wsi_segment.wsi.roi_area import FLOAT32_MAX, float32_coordinates, has_area
from wsi_segment.wsi.roi_sources import FIX, POLYGONAL, geojson_features, roi_objects, roi_sources
from wsi_segment.wsi.shown_path import not_utf8, utf8_shown

# QuPath 0.2 stored the object type in the feature id
_LEGACY_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tmaCore",
    "PathRootObject": "root",
}
_TYPES = {"tma_core": "tmaCore", **{v: v for v in _LEGACY_TYPES.values()}}

MISSING_CORE = "missing TMA core"  # what a core QuPath marks missing is counted as


@dataclass(frozen=True)
class RegionFeature:
    """One region as QuPath exported it (coordinates still in QuPath's image frame)."""

    index: int  # 1-based position among the file's objects, for messages
    geometry: dict[str, Any]  # GeoJSON Polygon / MultiPolygon
    name: str | None  # the object's name in QuPath
    classification: dict[str, Any] | None  # {"name": str, "color": [r, g, b]} when it has one
    qupath_id: str | None  # the object's UUID in QuPath (0.4+), None before
    object_type: str  # "annotation" or "tmaCore"


@dataclass
class RoiFile:
    """The regions of an export and what was skipped (`kind` -> count)."""

    path: Path
    regions: list[RegionFeature]
    skipped: Counter[str] = field(default_factory=Counter)
    # TMA cores QuPath marks missing (also counted in `skipped`): listed, never segmented
    missing_cores: list[RegionFeature] = field(default_factory=list)

    def warning(self) -> str | None:
        """One line counting the objects that are not regions (None when all were)."""
        if not self.skipped:
            return None
        n = len(self.regions)
        return (
            f"{self.path}: skipped {describe(self.skipped)} (not area annotations); "
            f"{n} region{'s' if n != 1 else ''} used"
        )


def describe(counts: Counter[str]) -> str:
    """'2,000 cells, 1 point annotation' in a fixed order (most first, then by name)."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n:,} {_plural(kind, n)}" for kind, n in items)


# properties.metadata key of every object wsi-segment writes (`pipeline.outputs.geojson`).
# QuPath's "All objects" export of an image holding an earlier import brings them back: its
# class polygons and region copies are results, not regions (counted, never measured again).
METADATA_KEY = "wsi_segment"
EARLIER_RESULT = "object of an earlier wsi-segment import"

_PLURALS = {
    EARLIER_RESULT: "objects of an earlier wsi-segment import",
    "object without geometry": "objects without geometry",
    "annotation without area": "annotations without area",
    "root": "root objects",
}


def _plural(kind: str, n: int) -> str:
    return kind if n == 1 else _PLURALS.get(kind, f"{kind}s")


def read_roi_file(path: str | Path) -> RoiFile:
    """The regions of a QuPath export (`.geojson`, `.json`, `.zip`, `.gz`).

    Read in blocks (`wsi.roi_stream`): cells and detections are counted without being
    decoded, so an "All objects" export of 200,000 cells costs a glance at each. Raises
    `RoiError` naming the file and the fix when it is missing, unreadable, not GeoJSON, or
    holds no area annotation.
    """
    if not_utf8(str(path)):
        raise RoiError(
            f"{utf8_shown(str(path))}: the ROI file's path is not valid UTF-8 (a name written in "
            "another encoding, such as Latin-1), which summary.json could not record; rename "
            "it in UTF-8 and pass it again"
        )
    path = Path(path)
    result = RoiFile(path, [])
    index = 0
    with contextlib.ExitStack() as stack:
        for entry, opener, kind in roi_sources(path, stack):
            for item in roi_objects(path, entry, opener, kind):
                if isinstance(item, str):  # counted without being decoded
                    index += 1
                    result.skipped[item] += 1
                    continue
                found = geojson_features(item)  # a Feature, or a bare geometry QuPath wraps
                for feature in found if found is not None else [item]:
                    index += 1
                    region, skip = _classify(path, feature, index)
                    if region is not None and skip == MISSING_CORE:
                        result.missing_cores.append(region)
                    if region is not None and not skip:
                        result.regions.append(region)
                    else:
                        result.skipped[skip] += 1
    if not result.regions:
        what = f"it holds {describe(result.skipped)}" if result.skipped else "it holds no objects"
        raise RoiError(f"{path}: no area annotation to use as a region ({what}); {FIX}")
    return result


def object_type(feature: dict[str, Any]) -> str:
    """QuPath's object type of a feature ("annotation" when it names none, as QuPath reads it)."""
    props = feature.get("properties")
    props = props if isinstance(props, dict) else {}
    for key in ("objectType", "object_type", "type"):
        value = props.get(key)
        if isinstance(value, str):
            return _TYPES.get(value, "annotation")  # QuPath makes unknown types annotations
    legacy = feature.get("id")
    if isinstance(legacy, str) and legacy in _LEGACY_TYPES:
        return _LEGACY_TYPES[legacy]
    return "annotation"


def _classify(path: Path, feature: dict[str, Any], index: int) -> tuple[RegionFeature | None, str]:
    """A region, or (None, what to count it as)."""
    kind = object_type(feature)
    props = feature.get("properties")
    props = props if isinstance(props, dict) else {}
    if kind in ("detection", "cell", "tile", "root"):
        return None, kind
    metadata = props.get("metadata")
    if isinstance(metadata, dict) and METADATA_KEY in metadata:
        return None, EARLIER_RESULT
    missing = kind == "tmaCore" and props.get("isMissing") is True
    geometry = _polygonal(feature.get("geometry"))
    if missing and (isinstance(geometry, str) or not _usable_core(path, index, geometry)):
        return None, MISSING_CORE  # counted, as before: it is listed only where it has a shape
    if isinstance(geometry, str):
        return None, geometry
    if not _has_area(path, index, geometry):
        return None, "annotation without area"
    name = props.get("name")
    return (
        RegionFeature(
            index=index,
            geometry=geometry,
            name=str(name) if isinstance(name, str) and name else None,
            classification=_classification(props.get("classification")),
            qupath_id=_uuid(feature.get("id")),
            object_type=kind,
        ),
        MISSING_CORE if missing else "",
    )


def _polygonal(geometry: Any) -> dict[str, Any] | str:
    """The polygonal geometry, or what to count a feature without one as."""
    if not isinstance(geometry, dict):
        return "object without geometry"
    kind = geometry.get("type")
    if kind in POLYGONAL:
        return geometry
    if kind in ("Point", "MultiPoint"):
        return "point annotation"
    if kind in ("LineString", "MultiLineString"):
        return "line annotation"
    if kind == "GeometryCollection":  # QuPath keeps the polygons of a mixed collection
        members = geometry.get("geometries")
        polys = [g for g in members or [] if isinstance(g, dict) and g.get("type") in POLYGONAL]
        if polys:
            coords = [
                c
                for g in polys
                for c in (g["coordinates"] if g["type"] == "MultiPolygon" else [g["coordinates"]])
            ]
            return {"type": "MultiPolygon", "coordinates": coords}
        return "line annotation" if members else "object without geometry"
    return "object without geometry"


def _usable_core(path: Path, index: int, geometry: dict[str, Any]) -> bool:
    """Whether a missing core's shape can be listed: bad coordinates on a core nobody
    measures are no reason to refuse the file."""
    try:
        return _has_area(path, index, geometry)
    except RoiError:
        return False


def _has_area(path: Path, index: int, geometry: dict[str, Any]) -> bool:
    """Whether QuPath reads the polygon as a non-empty area (`roi_area.has_area`: an empty
    ring, points on a line, or a sliver that collapses in QuPath's 32-bit vertices do not:
    it is skipped like a point, never the whole file)."""
    try:
        with np.errstate(invalid="ignore"):  # NaN: refused below, not a RuntimeWarning
            g = shape(geometry)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise RoiError(f"{path}: object {index} has bad coordinates ({exc}); {FIX}") from None
    if not float32_coordinates(g):
        raise RoiError(
            f"{path}: object {index} has coordinates that are not finite 32-bit numbers "
            f"(NaN, infinite or beyond {FLOAT32_MAX:.1e}); {FIX}"
        )
    return has_area(g)


def _classification(value: Any) -> dict[str, Any] | None:
    """{"name", "color"} from QuPath's forms: {"name", "color"}, {"names": [...], "color"}
    (derived classes, 0.5+) or {"name", "colorRGB": packed int} (0.2-0.3)."""
    if isinstance(value, str) and value:
        return {"name": value, "color": None}
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    names = value.get("names")
    if not (isinstance(name, str) and name) and isinstance(names, list) and names:
        name = ": ".join(str(n) for n in names)
    if not (isinstance(name, str) and name):
        return None
    color = value.get("color")
    rgb: list[int] | None = None
    if isinstance(color, list) and len(color) == 3 and all(isinstance(c, int) for c in color):
        rgb = [int(c) for c in color]
    elif isinstance(value.get("colorRGB"), int):
        packed = int(value["colorRGB"])
        rgb = [(packed >> 16) & 255, (packed >> 8) & 255, packed & 255]
    return {"name": name, "color": rgb}


def _uuid(value: Any) -> str | None:
    """QuPath's object id when it is one (0.4+ writes a UUID; 0.2 wrote the class name)."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
