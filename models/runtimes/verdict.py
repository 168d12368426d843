"""The checks a compiled graph passes before it runs, kept in the runtime's disk cache.

Opening OpenVINO for a model checks its fp32 graph against torch fp32 on the calibration tiles
and, for precision 'auto' where bf16 is a candidate, compares its bf16 graph with its fp32 one:
torch and OpenVINO forwards, and graphs compiled for the calibration batch that the slide path
never runs. Their outcome depends on what the compiled graphs depend on (model, versions, graph
format, precision, threads, CPU) and on the calibration tiles' bytes, so it is stored in an
entry keyed by exactly those and verified like every entry (`runtimes.cache`: a damaged or
foreign entry is a miss, and the check runs again). What is stored are the numbers; the
thresholds of today judge them, so a changed threshold needs no new entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import load_entry, store_best_effort

if TYPE_CHECKING:
    from .openvino_runtime import OpenVINOGraphs

_SUFFIX = "verdict"


def tiles_digest(tiles: torch.Tensor) -> str:
    """sha256 of the calibration tiles' shape and bytes: a check holds for these tiles only."""
    digest = hashlib.sha256(repr(tuple(tiles.shape)).encode())
    digest.update(tiles.contiguous().numpy().tobytes())
    return digest.hexdigest()


def verdict_key(graphs: OpenVINOGraphs, check: str, tiles: torch.Tensor) -> dict[str, object]:
    """The cache key of `check` ('fp32_agreement' | 'bf16_calibration') of `graphs`."""
    return {**graphs.entry_key(), "kind": "verdict", "check": check, "tiles": tiles_digest(tiles)}


def load_verdict(cache: Path, key: dict[str, object]) -> dict[str, Any] | None:
    """The stored numbers of the check `key` names, or None (never run, damaged, foreign)."""
    found = load_entry(cache, key, (_SUFFIX,))
    if not found:
        return None
    try:
        numbers = json.loads(found[_SUFFIX].read_text())
    except (OSError, ValueError):
        return None
    return numbers if isinstance(numbers, dict) else None


def store_verdict(cache: Path, key: dict[str, object], numbers: dict[str, Any]) -> None:
    """Keep a check's numbers for the next load (best effort, like the compiled graphs)."""

    def write(scratch: Path) -> dict[str, Path]:
        path = scratch / f"check.{_SUFFIX}"
        path.write_text(json.dumps(numbers, sort_keys=True))
        return {_SUFFIX: path}

    store_best_effort(cache, key, write)
