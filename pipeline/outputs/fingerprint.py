"""Identity of a run: same slide + same model weights + same output-changing parameters.

A rerun whose fingerprint matches a finished output folder is "up to date" and skipped.
The slide is identified by path, size and modification time (hashing gigabytes of pixels
would cost more than some runs); the model by the sha256 of its two files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from wsi_segment.models.checksum import file_sha256
from wsi_segment.pipeline.params import SegmentParams

FORMAT_VERSION = 2  # bump when outputs change for the same inputs


def model_sha256(model_dir: Path) -> str:
    """sha256 over model.json and model.safetensors, in that order."""
    digest = hashlib.sha256()
    for name in ("model.json", "model.safetensors"):
        digest.update(file_sha256(Path(model_dir) / name).encode())
    return digest.hexdigest()


def slide_identity(slide_path: str) -> dict[str, Any]:
    """Path, size and mtime for local files; the URL itself for remote ones."""
    if "://" in slide_path and not slide_path.startswith("file://"):
        return {"url": slide_path}
    path = Path(slide_path.removeprefix("file://")).resolve()
    stat = os.stat(path)
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def canonical_sha256(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_fingerprint(slide_path: str, model_hash: str, params: SegmentParams, meta: Any) -> str:
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
