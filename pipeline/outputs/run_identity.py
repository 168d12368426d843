"""A run's identity: what decides whether a finished output folder is "up to date".

A run is the same slide + the same model weights + the same output-changing parameters; a
rerun whose fingerprint matches a finished output folder is "up to date" and skipped. The
slide is identified by path, size and modification time (hashing gigabytes of pixels would
cost more than some runs); the model by the hash of the model.json and weight bytes it was
loaded from (`ModelSource.identity`: `models.model_files`, `models.bundle.load_bundle`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.models.checksum import file_sha256
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.shown_path import is_remote_url, shown_slide_path
from wsi_segment.wsi.slide_path import remote_object_facts

if TYPE_CHECKING:  # models.meta imports torch, which a run loads in the background
    from wsi_segment.models.meta import ModelMeta


FORMAT_VERSION = 6  # bump when outputs change for the same inputs
# Ids in the outputs (GeoJSON features, the OME-TIFF's UUID) are UUIDs derived from the run's
# fingerprint and the object's key: the same run gives the same bytes, and two different runs
# never share an id.
_ID_NAMESPACE = uuid.UUID("6f1d3c2e-5b7a-4e8f-9a0b-1c2d3e4f5a6b")


def output_id(key: str) -> uuid.UUID:
    """The id of the output object `key` names (it starts with the run's fingerprint)."""
    return uuid.uuid5(_ID_NAMESPACE, key)


def slide_identity(slide_path: str) -> dict[str, Any]:
    """Path, size and mtime for local files; for remote ones the URL as shown
    (`shown_slide_path`: without its query) and what its store says of the object (size,
    ETag, modification time: `remote_object_facts`, asked by the whole URL). A presigned URL's
    query is a signature made anew each night for the same object: it is no part of the
    slide, and the store's facts tell a replaced object apart. A folder (a DICOM slide) adds
    the name, size and mtime of each file in it: its files are the slide, and rewriting one
    changes the folder's own mtime not at all."""
    if is_remote_url(slide_path):
        return {"url": shown_slide_path(slide_path), **remote_object_facts(slide_path)}
    path = Path(slide_path.removeprefix("file://")).resolve()
    stat = os.stat(path)
    identity: dict[str, Any] = {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file())
        identity["files"] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return identity


def canonical_sha256(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_fingerprint(
    slide_path: str, model_hash: str, params: SegmentParams, meta: ModelMeta
) -> str:
    data = {
        "format": FORMAT_VERSION,
        "slide": slide_identity(slide_path),
        "model": model_hash,
        "params": params.fingerprint_fields(),
        "tile": int(meta.tile_size),
    }
    if params.roi is not None:  # the regions drawn, not the file's name, decide the outputs
        data["roi_sha256"] = file_sha256(Path(params.roi))
    return canonical_sha256(data)
