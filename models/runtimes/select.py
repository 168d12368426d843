"""Open the runtime a model's slide-path forward passes run in, and its precision.

`open_runtime` takes the run policy's runtime decision (or, for a model loaded outside a
run, asks `runtime_decision`), the user's request (runtime and precision) and the machine,
and for OpenVINO compiles the graph, checks it against torch fp32 on the real calibration
tiles (a compiled graph that does not give torch's labels is never used: a wrong result is
worse than a slow one) and, where the precision decided is bf16 if calibrated
(`precision_decision`), runs the bf16 calibration (models/precision_calibration.py). Both checks'
numbers are kept in the disk cache beside the compiled graphs (`runtimes.verdict`), so a
load that finds them runs no forward and compiles nothing until the slide path's first
batch. Whatever keeps OpenVINO from running (not installed, a compile failure, a failed
check) is one warning and the torch path; a model whose graph cannot be exported is refused
when OpenVINO was asked for by name, and runs in torch under 'auto', both with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wsi_segment.errors import ModelError

from ..precision_calibration import (
    MIN_AGREEMENT,
    PrecisionCalibration,
    calibrate_bf16,
    calibration_tiles,
    compare_labels,
)
from .cache import default_cache_dir
from .decision import BF16_IF_CALIBRATED, precision_decision, runtime_decision
from .openvino_runtime import (
    GraphNotExpressible,
    OpenVINOGraphs,
    RuntimeUnavailable,
    openvino_version,
)
from .verdict import load_verdict, store_verdict, verdict_key

if TYPE_CHECKING:
    from ..segmentation_model import SegmentationModel

_log = logging.getLogger(__name__)
# the numbers each check stores: an entry without them (an older format) is computed again
_CHECK_FIELDS = {
    "fp32_agreement": frozenset({"agreement"}),
    "bf16_calibration": frozenset(
        {"tiles", "tile_size", "agreement", "max_area_shift", "area_shifts", "own_patches"}
    ),
}


@dataclass
class RuntimeChoice:
    """The runtime that runs the slide path, why, and (OpenVINO) its graphs and precision."""

    runtime: str  # torch | openvino
    reason: str
    warning: str | None = None  # why OpenVINO was wanted but does not run
    graphs: OpenVINOGraphs | None = None
    precision: str | None = None  # OpenVINO's: fp32 | bf16
    precision_reason: str = ""
    calibration: PrecisionCalibration | None = None
    fp32_agreement: float | None = None  # OpenVINO fp32 vs torch fp32 labels, calibration tiles
    checks_computed: int = 0  # checks run here, not read from the cache (runtimes.verdict)

    def report(self) -> dict[str, object]:
        return {
            "runtime": self.runtime,
            "runtime_reason": self.reason,
            "runtime_warning": self.warning,
            "runtime_fp32_agreement": self.fp32_agreement,
        }


def open_runtime(
    model: SegmentationModel,
    requested: str,
    precision: str,
    device_type: str,
    flags: frozenset[str],
    cache_dir: Path | None = None,
    decided: tuple[str, str] | None = None,
    decided_precision: tuple[str, str] | None = None,
    threads: int | None = None,
) -> RuntimeChoice:
    """The runtime for `model` (already on its device) under `requested` (auto | torch |
    openvino: what the user asked, which tells auto's fallback from openvino's refusal) and
    `precision` (auto | fp32 | bf16); `flags` are the CPU's. `decided`: (runtime, reason) as
    the run policy decided it (`runtime_decision` on its machine description), opened as
    decided; without it (a model loaded outside a run) `runtime_decision` decides here.
    `decided_precision`: the run policy's (precision, reason) for the runtime it decided
    (`precision_decision`), used with `decided`; without them it decides here alike.
    `threads`: OpenVINO's (a run passes its policy's cores of this process); None: this
    thread's torch count, which on a Dask worker (OMP_NUM_THREADS=1) is 1."""
    if decided is None or decided_precision is None:
        decided_precision = None  # made for the policy's runtime: decided here with it
    if decided is None:
        available = openvino_version() is not None
        decided = runtime_decision(requested, device_type, flags, available)
    runtime, reason = decided
    if runtime == "torch":
        warning = reason if requested == "openvino" else None
        return RuntimeChoice("torch", reason, warning)
    try:
        chosen = decided_precision or precision_decision(precision, "cpu", runtime, flags, False)
        cache = cache_dir or default_cache_dir()
        threads = threads if threads is not None else torch.get_num_threads()
        choice = _open_openvino(model, chosen, flags, reason, cache, threads)
        if choice.graphs is not None:
            # the graphs the checks compiled (calibration batch, whole tiles), which the
            # slide path never runs: kept, they would hold their weights and buffers to the
            # run's end
            choice.graphs.drop_compiled()
        return choice
    except GraphNotExpressible as exc:
        why = f"the model's graph cannot be exported to OpenVINO ({exc})"
        if requested == "openvino":
            raise ModelError(f"{model.meta.name}: {why}; use --runtime torch") from exc
        return RuntimeChoice("torch", f"torch: {why}", f"{why}; ran in torch")
    except RuntimeUnavailable as exc:
        return RuntimeChoice("torch", f"torch: {exc}", f"{exc}; ran in torch")


def _open_openvino(
    model: SegmentationModel,
    precision: tuple[str, str],
    flags: frozenset[str],
    reason: str,
    cache: Path,
    threads: int,
) -> RuntimeChoice:
    """OpenVINO's graphs in `precision` ((fp32 | bf16 | bf16-if-calibrated, reason), as
    `precision_decision` decided it) on `threads`, once they keep torch fp32's labels
    (the checks' verdicts from the cache, or computed here)."""
    tile = int(model.meta.tile_size)
    tiles = calibration_tiles(tile, model.validation_patches)
    fp32 = OpenVINOGraphs(model, "fp32", threads, flags, cache)
    choice = RuntimeChoice("openvino", reason, graphs=fp32)
    fp32_labels: list[torch.Tensor] = []  # OpenVINO fp32 labels of the tiles, once computed

    def ov_fp32_labels() -> torch.Tensor:
        if not fp32_labels:
            fp32_labels.append(fp32.predict_reduced(tiles, 0, tile, 1).labels)
        return fp32_labels[0]

    def fp32_agreement() -> dict[str, Any]:
        with torch.inference_mode():
            torch_labels = model.torch_labels(tiles, bf16=False)
        agreement, _shifts = compare_labels(torch_labels.numpy(), ov_fp32_labels().numpy())
        return {"agreement": agreement}

    checked = _checked(choice, fp32, "fp32_agreement", tiles, fp32_agreement)
    choice.fp32_agreement = float(checked["agreement"])
    if choice.fp32_agreement < MIN_AGREEMENT:
        raise RuntimeUnavailable(
            f"OpenVINO's fp32 graph kept only {100 * choice.fp32_agreement:.2f} % of torch's "
            "labels on the calibration tiles"
        )
    value, why = precision
    if value == "fp32":
        choice.precision, choice.precision_reason = "fp32", why
        return choice
    bf16 = OpenVINOGraphs(model, "bf16", threads, flags, cache)
    choice.graphs, choice.precision = bf16, "bf16"
    if value != BF16_IF_CALIBRATED:
        choice.precision_reason = why
        return choice

    def labels_of(x: torch.Tensor, low: bool) -> torch.Tensor:
        if not low:
            return ov_fp32_labels()
        return bf16.predict_reduced(x, 0, tile, 1).labels

    where = "OpenVINO on a CPU with AMX, or AVX512-BF16 on an AMD CPU"

    def bf16_calibration() -> dict[str, Any]:
        found = asdict(calibrate_bf16(labels_of, tile, where, model.validation_patches))
        del found["where"]  # the code's words, not a measurement
        return found

    numbers = _checked(choice, bf16, "bf16_calibration", tiles, bf16_calibration)
    stored = {k: numbers[k] for k in _CHECK_FIELDS["bf16_calibration"]}
    calibration = PrecisionCalibration(**stored, where=where)
    if not calibration.bf16_chosen:
        choice.graphs, choice.precision = fp32, "fp32"
    choice.calibration = calibration
    choice.precision_reason = calibration.reason()
    _log.info("precision auto: %s", choice.precision_reason)
    return choice


def _checked(
    choice: RuntimeChoice,
    graphs: OpenVINOGraphs,
    check: str,
    tiles: torch.Tensor,
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """The numbers of `check` from the cache when an entry for these graphs and tiles is
    there and whole, else computed (counted in `choice.checks_computed`) and stored."""
    key = verdict_key(graphs, check, tiles)
    numbers = load_verdict(graphs.cache_dir, key)
    if numbers is not None and _CHECK_FIELDS[check] <= numbers.keys():
        return numbers
    numbers = compute()
    choice.checks_computed += 1
    store_verdict(graphs.cache_dir, key, numbers)
    return numbers
