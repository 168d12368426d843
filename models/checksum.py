"""sha256 of a file, read in blocks: the weights' checksum in model.json and a run's
fingerprint (model files, ROI file) use this one digest.

Torch-free on purpose: the slide path hashes the model while torch loads in the background.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes, read `block` bytes at a time (any size of file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(json_sha256: str, weights_sha256: str) -> str:
    """A model's identity (run fingerprint, summary.json): sha256 over the hex digests of the
    model.json bytes and the weight bytes that were loaded, in that order."""
    return hashlib.sha256((json_sha256 + weights_sha256).encode()).hexdigest()
