"""The checks a compiled graph passes before it runs, kept in the runtime's disk cache:
keyed by what the graphs depend on, the check's geometry and the calibration tiles' bytes
(`verdict_key`). The numbers are stored, and today's thresholds judge them. The bf16 verdict
is also kept by what is known before torch loads (`calibration_key`), so a warm run's plan
finds it and the loader calibrates nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..meta import model_files_identity
from ..precision_calibration import PrecisionCalibration
from .cache import cpu_key, default_cache_dir, load_entry, package_version, store_best_effort

if TYPE_CHECKING:
    from .openvino_runtime import OpenVINOGraphs
    from .tile_io import Geometry

_SUFFIX = "verdict"
_CALIBRATION_FORMAT = 1  # bump when the calibration tiles or what is compared change
# the numbers a bf16 calibration stores (`PrecisionCalibration`'s measured fields)
CALIBRATION_FIELDS = frozenset(
    {"tiles", "tile_size", "agreement", "max_area_shift", "area_shifts", "own_patches"}
)
# why bf16 was a candidate, by runtime: the code's words, not stored
CALIBRATION_WHERE = {
    "torch": "the CPU has AMX",
    "openvino": "OpenVINO on a CPU with AMX, or AVX512-BF16 on an AMD CPU",
}


def verdict_key(
    graphs: OpenVINOGraphs, check: str, geometry: Geometry, tiles: np.ndarray
) -> dict[str, object]:
    """The cache key of `check` ('fp32_agreement' | 'bf16_calibration') of `graphs` at
    `geometry` on these calibration tiles: a check holds for the tiles and graph it ran only."""
    digest = hashlib.sha256(repr(tuple(tiles.shape)).encode())
    digest.update(np.ascontiguousarray(tiles).tobytes())
    return {
        **graphs.entry_key(),
        "kind": "verdict",
        "check": check,
        "geometry": geometry.key(),
        "tiles": digest.hexdigest(),
    }


def load_verdict(
    cache: Path, key: Mapping[str, object], fields: frozenset[str]
) -> dict[str, Any] | None:
    """The stored numbers `fields` of the check `key` names, or None (never run, damaged,
    foreign, or an older format without them)."""
    found = load_entry(cache, key, (_SUFFIX,))
    try:
        numbers = json.loads(found[_SUFFIX].read_text()) if found else None
    except (OSError, ValueError):
        return None
    if not isinstance(numbers, dict) or not numbers.keys() >= fields:
        return None
    return {k: numbers[k] for k in sorted(fields)}


def store_verdict(cache: Path, key: dict[str, object], numbers: dict[str, Any]) -> None:
    """Keep a check's numbers for the next load (best effort, like the compiled graphs)."""

    def write(scratch: Path) -> dict[str, Path]:
        path = scratch / f"check.{_SUFFIX}"
        path.write_text(json.dumps(numbers, sort_keys=True))
        return {_SUFFIX: path}

    store_best_effort(cache, key, write)


def calibration_key(identity: str, runtime: str, cpu_flags: frozenset[str]) -> dict[str, object]:
    """The cache key of the bf16 verdict of the model whose files hash to `identity`, in
    `runtime` on a CPU with `cpu_flags`: what the verdict depends on, known before torch."""
    versions = {"torch": package_version("torch")}
    if runtime == "openvino":
        versions["openvino"] = package_version("openvino")
    return {
        "kind": "bf16_verdict",
        "format": _CALIBRATION_FORMAT,
        "model": identity,
        "runtime": runtime,
        "versions": versions,
        "cpu": cpu_key(cpu_flags),
    }


def calibration_numbers(calibration: PrecisionCalibration) -> dict[str, Any]:
    """A calibration's measured fields, as stored and as a plan takes them, not the code's
    words (`where`)."""
    numbers = dataclasses.asdict(calibration)
    return {k: numbers[k] for k in sorted(CALIBRATION_FIELDS)}


def calibration_of(numbers: Mapping[str, Any], runtime: str) -> PrecisionCalibration:
    """The calibration whose measured fields are `numbers` (`calibration_numbers`), run in
    `runtime`: judged by today's thresholds, with the code's words for why bf16 was tried."""
    return PrecisionCalibration(**numbers, where=CALIBRATION_WHERE[runtime])


def kept_calibration(
    model_dir: str, runtime: str, cpu_flags: frozenset[str]
) -> dict[str, Any] | None:
    """The bf16 calibration an earlier load kept for the model in `model_dir` in `runtime` on
    a CPU with `cpu_flags`, or None: read without torch."""
    identity, _meta = model_files_identity(model_dir)
    key = calibration_key(identity, runtime, cpu_flags)
    return load_verdict(default_cache_dir(), key, CALIBRATION_FIELDS)
