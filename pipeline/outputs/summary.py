"""summary.json: everything needed to reproduce and audit one slide's run.

Per-class areas come from pixel counts of the label map (exactly the area of the unsimplified
polygons), so summary, zarr map and GeoJSON agree. Values are made JSON-safe here (numpy
scalars, tuples, Paths; NaN -> null) so callers can pass what they have.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_segment.models.labels import UNCLASSIFIED_NAME
from wsi_segment.wsi.shown_path import shown_text

# summary.json's layout: bump when a key moves or changes meaning (4: an undefined share or
# mean is null, where 3 and earlier wrote 0.0)
SCHEMA_VERSION = 4


def command_line(command: Sequence[str] | None) -> str:
    """The command that repeats a run, as one line a shell runs as it is (`shlex.join`):
    `command` (a flow run's origin), else this process's (`process_command`); each URL in it
    as shown (`shown_text`: a presigned URL's signature is not written down)."""
    words = process_command() if command is None else command
    return shlex.join(shown_text(word) for word in words)


def process_command() -> list[str]:
    """This process's command line, as it can be run again. `python -m
    wsi_segment.flows.cli` leaves a module's file in `sys.argv[0]`, which repeats nothing,
    so the interpreter's own command line is taken whenever `sys.argv[0]` is not an
    executable program. Each URL in it as shown (`shown_text`): it is written down."""
    program = sys.argv[0] if sys.argv else ""
    if os.path.isfile(program) and os.access(program, os.X_OK) and not program.endswith(".py"):
        words = list(sys.argv)
    else:
        words = [sys.executable, *sys.orig_argv[1:]]
    return [shown_text(word) for word in words]


# Distributions whose versions decide the numbers in the outputs (or how they are read).
_DISTRIBUTIONS = {
    "wsi-segment": "wsi-segment",
    "torch": "torch",
    "openslide-python": "openslide-python",
    "openslide-bin": "openslide-bin",
    "tiffslide": "tiffslide",
    "zarr": "zarr",
    "numpy": "numpy",
    "dask": "dask",
    "shapely": "shapely",
    "rasterio": "rasterio",
    "ome-zarr": "ome-zarr",
    "segmentation-models-pytorch": "segmentation-models-pytorch",
    "timm": "timm",
    "pillow": "pillow",
}


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy -> Python, tuples -> lists, Paths -> str, NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def software_versions() -> dict[str, str | None]:
    """Installed versions (None when a package is absent), plus Python and the platform."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for key, dist in _DISTRIBUTIONS.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    try:  # the C library version matters more than the binding's
        import openslide

        versions["openslide"] = str(openslide.__library_version__)
    except (ImportError, OSError, AttributeError):
        versions["openslide"] = None
    return versions


def _mpp_pair(output_mpp: float | Sequence[float]) -> tuple[float, float]:
    if np.isscalar(output_mpp):
        return float(output_mpp), float(output_mpp)  # type: ignore[arg-type]
    x, y = output_mpp  # type: ignore[misc]
    return float(x), float(y)


def ratio(part: float, whole: float) -> float | None:
    """`part / whole`, or None where `whole` is 0: a share of no tissue or a mean over no
    pixels is undefined, not 0, and a reader must not take it for a measured 0 (nor a mean
    over slides count it). Written as null in summary.json, an empty cell in cohort.csv,
    no measurement in the GeoJSON and "n/a" on the report page."""
    return float(part) / float(whole) if whole else None


def class_summary(
    class_names: Sequence[str],
    counts: Sequence[int] | np.ndarray,
    prob_sums: Sequence[float] | np.ndarray,
    area_px: Sequence[float] | np.ndarray,
    um2_per_px: float,
) -> dict[str, dict[str, float | None]]:
    """summary.json's `classes`: per class its area (um^2, from `area_px`, the class's
    output px^2 on the slide), its share of the labelled tissue (every class's area) and its
    mean probability (0-1) over its `counts[k]` pixels, whose probabilities sum to
    `prob_sums[k]`. Undefined values are None (`ratio`): every share on a slide without
    tissue, the mean of a class with no pixels, and always `Unclassified`'s (it has no
    probability); a class with no pixels in tissue keeps its share, 0.0."""
    labelled = float(np.sum(area_px))
    out = {}
    for name, n, a, s in zip(class_names, counts, area_px, prob_sums, strict=True):
        out[str(name)] = {
            "area_um2": float(a) * um2_per_px,
            "fraction_of_tissue": ratio(a, labelled),
            "mean_probability": None if name == UNCLASSIFIED_NAME else ratio(s, n),
        }
    return out


def class_measurements(
    class_names: Sequence[str],
    counts: Sequence[int] | np.ndarray,
    prob_sums: Sequence[float] | np.ndarray,
    output_mpp: float | Sequence[float],
    area_px: Sequence[float] | np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """GeoJSON measurements per class: area in um^2 and mean probability (0-1) over the
    class's pixels; `prob_sums[k]` is the sum of class-k probability (0-1) over those pixels.
    `area_px`: the class's output px^2 on the slide when they differ from `counts` (pixels
    over the slide's edge count for their part on it). A class with no pixels has no mean:
    its measurement is left out (QuPath's measurements are numbers; a missing one it shows
    as empty).
    """
    mx, my = _mpp_pair(output_mpp)
    sizes = counts if area_px is None else area_px
    out = {}
    for name, n, a, s in zip(class_names, counts, sizes, prob_sums, strict=True):
        m = {"area_um2": (int(a) if area_px is None else float(a)) * mx * my}
        mean = ratio(s, n)
        if mean is not None:
            m["mean_probability"] = mean
        out[str(name)] = m
    return out


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write indented strict JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(summary), f, indent=2, allow_nan=False, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_summary(path: str | Path) -> dict[str, Any] | None:
    """The summary at `path`, or None when missing or unreadable (treated as not done)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
