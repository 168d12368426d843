"""QuPath-importable GeoJSON: one annotation per class plus the tissue outline.

The schema is what QuPath's `PathObjectTypeAdapters` / `GsonTools` read (checked in the
QuPath sources): feature `id` a UUID string; `properties.objectType` "annotation";
`properties.classification` = {"name": str, "color": [r, g, b] ints} (QuPath reads a
classification object only when it has both keys); `properties.measurements` = object of
name -> number. Coordinates are level-0 pixels, origin top-left, y down. Written with `json`
(never string formatting) and `allow_nan=False`: NaN is not JSON, and QuPath reads the
measurements as numbers (a null it cannot take), so missing or undefined numbers are left
out instead, which QuPath shows as an empty measurement.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_segment.errors import ConfigError
from wsi_segment.models.labels import TISSUE_NAME
from wsi_segment.pipeline.outputs.run_identity import output_id
from wsi_segment.wsi.roi_file import METADATA_KEY

TISSUE_COLOR = (128, 128, 128)
# Feature ids are UUIDs derived from the run's fingerprint (slide, model, parameters, regions)
# and the object's key (`run_identity.output_id`): the same run gives the same bytes, and two different runs never share
# an id, so importing both into one image gives no duplicate ids. Importing the *same* file
# twice always does (QuPath's importObjectsFromFile adds objects without asking, keeping their
# ids); the import script (docs/qupath/wsi_segment_import.groovy) instead removes what an
# earlier import of ours added, found by the metadata key below, not by id.
Color = tuple[int, int, int]


def _rgb(color: Sequence[int]) -> list[int]:
    """QuPath parses `color` into an int[]: 3 integers 0-255."""
    rgb = [int(c) for c in color]
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ConfigError(f"colour must be three integers 0-255, got {color!r}")
    return rgb


def _numbers(values: Mapping[str, float | None] | None) -> dict[str, float]:
    """Measurements as plain finite floats (numpy scalars and NaN are not JSON numbers); an
    undefined one (None, NaN) is left out."""
    out: dict[str, float] = {}
    for name, value in (values or {}).items():
        if value is None:
            continue
        v = float(value)
        if math.isfinite(v):
            out[str(name)] = v
    return out


def _geometry(geom: BaseGeometry, decimals: int | None) -> dict[str, Any]:
    """Polygon/MultiPolygon GeoJSON geometry (single part written as Polygon), rounded."""
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty]
    if not parts:
        raise ConfigError(f"expected polygonal geometry, got {geom.geom_type}")
    out: BaseGeometry = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if decimals is not None:
        out = shapely.transform(out, lambda xy: np.round(xy, decimals))
    # GEOS's GeoJSON writer (C, full double precision) parsed back by json: {type,
    # coordinates} with plain lists of floats that equal their JSON round trip, ~2x faster
    # than shapely's Python `mapping`.
    geometry: dict[str, Any] = json.loads(shapely.to_geojson(out))
    return geometry


def make_feature(
    geom: BaseGeometry,
    name: str,
    color: Sequence[int],
    measurements: Mapping[str, float | None] | None = None,
    id_key: str | None = None,
    decimals: int | None = 3,
    kind: str = "class",
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One QuPath annotation feature; `id_key` makes the UUID deterministic. `kind` goes
    into the object's metadata (`wsi_segment`: "class" for class polygons and the tissue
    outline, "region" for a `--roi` region), which QuPath 0.5+ keeps on the object (string
    values only), so the import script (docs/qupath/wsi_segment_import.groovy) finds what an
    earlier import added; `metadata` adds entries (a region's QuPath object)."""
    fid = output_id(id_key) if id_key else uuid.uuid4()
    properties: dict[str, Any] = {
        "objectType": "annotation",
        "name": str(name),
        "classification": {"name": str(name), "color": _rgb(color)},
    }
    numbers = _numbers(measurements)
    if numbers:
        properties["measurements"] = numbers
    properties["metadata"] = {
        METADATA_KEY: kind,
        **{k: str(v) for k, v in (metadata or {}).items()},
    }
    return {
        "type": "Feature",
        "id": str(fid),
        "geometry": _geometry(geom, decimals),
        "properties": properties,
    }


def build_feature_collection(
    class_geoms_level0: Mapping[int, BaseGeometry],
    class_names: Sequence[str],
    colors: Sequence[Color],
    measurements: Mapping[str, Mapping[str, float]],
    tissue_geom: BaseGeometry | None,
    id_prefix: str | None = None,
    decimals: int | None = 3,
) -> dict[str, Any]:
    """FeatureCollection: the Tissue outline first (QuPath draws later objects on top), then
    one feature per class in class order. Empty classes are left out (QuPath cannot show an
    empty ROI). `measurements` is keyed by class name (and "Tissue"); `id_prefix` (the run's
    fingerprint) makes feature ids reproducible, and different for another run.
    """
    if len(class_names) != len(colors):
        raise ConfigError(f"{len(class_names)} class names but {len(colors)} colours")
    features = []
    if tissue_geom is not None and not tissue_geom.is_empty:
        features.append(
            make_feature(
                tissue_geom,
                TISSUE_NAME,
                TISSUE_COLOR,
                measurements.get(TISSUE_NAME),
                f"{id_prefix}/{TISSUE_NAME}" if id_prefix else None,
                decimals,
            )
        )
    for cls, name in enumerate(class_names):
        geom = class_geoms_level0.get(cls)
        if geom is None or geom.is_empty:
            continue
        key = f"{id_prefix}/{name}" if id_prefix else None
        features.append(
            make_feature(geom, name, colors[cls], measurements.get(name), key, decimals)
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, fc: Mapping[str, Any]) -> Path:
    """Write compact UTF-8 JSON atomically (temp file + rename): never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    # json.dumps runs the C encoder (json.dump to a file does not): ~5x faster on big maps.
    text = json.dumps(fc, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
