"""Open the runtime that executes a model's tile graph, as a run's `RuntimeSpec` says: it
decides nothing. OpenVINO's graph is checked against torch fp32 on the calibration tiles
before it runs (a wrong result is worse than a slow one); `bf16-if-calibrated` gets the bf16
calibration's verdict here, in either runtime. Both checks' numbers are kept in the disk cache
(`runtimes.verdict`), so a warm load runs no forward. Whatever keeps OpenVINO from running is
one warning and torch at the spec's fallback precision; a model whose graph cannot be exported
is refused where OpenVINO was asked for by name.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_segment.errors import GraphNotExpressible, ModelError, RuntimeUnavailable

from ..precision_calibration import (
    MIN_AGREEMENT,
    Labeller,
    PrecisionCalibration,
    calibrate_bf16,
    calibration_tiles,
    compare_labels,
)
from .cache import default_cache_dir
from .decision import BF16_IF_CALIBRATED
from .openvino_runtime import OpenVINOExecutor, OpenVINOGraphs
from .spec import RuntimeSpec
from .tile_io import Executor, Geometry, graph_labels
from .verdict import (
    CALIBRATION_FIELDS,
    CALIBRATION_WHERE,
    calibration_key,
    calibration_numbers,
    calibration_of,
    load_verdict,
    store_verdict,
    verdict_key,
)

if TYPE_CHECKING:
    from ..model_files import ModelSource
    from ..segmentation_model import SegmentationModel

_log = logging.getLogger(__name__)
# the fewest labels the fp32 check compares: at 99.5 %, one near-tie pixel must not fail it
MIN_CHECK_LABELS = 10_000
# the numbers each check stores: an entry without them (an older format) is computed again
_CHECK_FIELDS = {"fp32_agreement": frozenset({"agreement"}), "bf16_calibration": CALIBRATION_FIELDS}


@dataclass
class OpenedRuntime:
    """What executes a model's tile graph, at which precision, and why."""

    runtime: str  # torch | openvino
    reason: str
    precision: str  # what runs: fp32 | bf16 | fp16
    precision_reason: str
    device: str  # cpu | cuda
    warning: str | None = None  # why OpenVINO was wanted but does not run
    graphs: OpenVINOGraphs | None = None
    calibration: PrecisionCalibration | None = None
    fp32_agreement: float | None = None  # OpenVINO fp32 vs torch fp32 labels (`_check_fp32`)
    checks_computed: int = 0  # checks run here, not read from the cache (runtimes.verdict)
    network: SegmentationModel | None = None  # what torch runs (OpenVINO: its graphs)
    cuda_graphs: bool = False  # torch on CUDA: each batch a replay of one captured graph

    def executor(self, geometry: Geometry, batch: int, thread_cores: int | None = None) -> Executor:
        """An executor of the tile graph at `geometry` for batches of `batch` tiles, for a
        thread with `thread_cores` of the CPU's cores (None: all, or a GPU's)."""
        if self.graphs is not None:
            return OpenVINOExecutor(self.graphs, geometry, thread_cores)
        assert self.network is not None, "torch's runtime opens with its network"
        from .executor import CudaGraphExecutor, TorchExecutor

        eager = TorchExecutor(self.network, geometry, self.precision, thread_cores)
        return CudaGraphExecutor(eager, batch) if self.cuda_graphs else eager

    def worded(self, spec: RuntimeSpec) -> OpenedRuntime:
        """This runtime with `spec`'s reasons wherever it ran what `spec` said: a process
        shares one opened runtime between specs that differ only in their words (the process
        cache keys on values), and each run reports its own plan's."""
        if self.runtime != spec.runtime:  # fell back to torch: its own reason
            if self.calibration is None and self.precision == spec.fallback:
                return dataclasses.replace(self, precision_reason=spec.fallback_reason)
            return self
        calibrated = self.calibration is not None  # the verdict's reason, not the plan's
        return dataclasses.replace(
            self,
            reason=spec.runtime_reason,
            warning=spec.runtime_reason if self.warning is not None else None,
            precision_reason=self.precision_reason if calibrated else spec.precision_reason,
        )

    def report(self) -> dict[str, object]:
        """What the forward passes ran in, and why (summary.json `precision`)."""
        calibration = self.calibration
        return {
            "device": self.device,
            "autocast": self.precision,
            "channels_last": True,
            "reason": self.precision_reason,
            "calibration": calibration.as_dict() if calibration is not None else None,
            "runtime": self.runtime,
            "runtime_reason": self.reason,
            "runtime_warning": self.warning,
            "runtime_fp32_agreement": self.fp32_agreement,
            "cuda_graphs": self.cuda_graphs,
        }

    def cache_record(self) -> dict[str, int]:
        """What this runtime took from the runtime cache and what it built or computed instead,
        so far in this process: a cold cache (a machine's first run, a new version) compiles
        and checks, and the run starts that much later."""
        graphs = self.graphs
        return {
            "graphs_compiled": graphs.builds if graphs is not None else 0,
            "graphs_loaded": graphs.cache_hits if graphs is not None else 0,
            "checks_computed": self.checks_computed,
        }


def open_runtime(
    model: ModelSource, spec: RuntimeSpec, cache_dir: Path | None = None
) -> OpenedRuntime:
    """`spec` carried out for `model` (on its device). OpenVINO builds the model's network
    only where its cache lacks a graph or a check's verdict."""
    cache = cache_dir or default_cache_dir()
    if spec.runtime == "torch":
        opened = _open_torch(model, spec.precision, spec.precision_reason)
        opened.reason, opened.cuda_graphs = spec.runtime_reason, spec.cuda_graphs
        opened.warning = spec.runtime_reason if spec.by_name else None
        return _with_verdict(opened, model, spec, cache)
    try:
        opened = _with_verdict(_open_openvino(model, spec, cache), model, spec, cache)
        if opened.graphs is not None:
            # the checks' graphs (the calibration batch) would hold their memory to the
            # run's end: the slide path compiles its own batch
            opened.graphs.drop_compiled()
        return opened
    except (GraphNotExpressible, RuntimeUnavailable) as exc:  # torch at the fallback precision
        why = str(exc)
        if isinstance(exc, GraphNotExpressible):
            why = f"the model's graph cannot be exported to OpenVINO ({exc})"
            if spec.by_name:
                raise ModelError(f"{model.meta.name}: {why}; use --runtime torch") from exc
        opened = _open_torch(model, spec.fallback, spec.fallback_reason)
        opened.reason, opened.warning = f"torch: {why}", f"{why}; ran in torch"
        return opened


def _with_verdict(
    opened: OpenedRuntime, model: ModelSource, spec: RuntimeSpec, cache: Path
) -> OpenedRuntime:
    """`opened` reporting the verdict its plan was decided from, or, where it obtained one,
    with that verdict kept for the next plan (a model built in memory has no key for it)."""
    if spec.calibration is not None:
        opened.calibration = calibration_of(spec.calibration, spec.runtime)
        return opened
    if opened.calibration is not None and model.identity:
        key = calibration_key(model.identity, opened.runtime, spec.cpu_flags)
        if load_verdict(cache, key, CALIBRATION_FIELDS) is None:
            store_verdict(cache, key, calibration_numbers(opened.calibration))
    return opened


def _open_torch(source: ModelSource, precision: str, why: str) -> OpenedRuntime:
    """torch at `precision` on the source's network; bf16-if-calibrated gets the
    calibration's verdict here (on the source's validation patches)."""
    model = source.network()
    opened = OpenedRuntime("torch", "", precision, why, model.device.type, network=model)
    if precision != BF16_IF_CALIBRATED:
        return opened
    tile = int(model.meta.tile_size)
    where, own = CALIBRATION_WHERE["torch"], source.validation_patches
    calibration = calibrate_bf16(torch_labeller(model, tile), tile, where, own)
    _log.info("precision auto: %s", calibration.reason())
    opened.precision = "bf16" if calibration.bf16_chosen else "fp32"
    opened.precision_reason, opened.calibration = calibration.reason(), calibration
    opened.checks_computed = 1  # the calibration (a warm plan knows its verdict: none runs)
    return opened


def torch_labeller(model: SegmentationModel, tile: int) -> Labeller:
    """The slide path's labels of whole uint8 tiles in torch, fp32 or bf16 (`low`): what
    bf16's calibration compares (`calibrate_bf16`)."""
    from .executor import TorchExecutor

    executors = {
        low: TorchExecutor(model, Geometry.whole(tile), "bf16" if low else "fp32")
        for low in (False, True)
    }
    return lambda tiles, low: graph_labels(executors[low], tiles)


def _open_openvino(model: ModelSource, spec: RuntimeSpec, cache: Path) -> OpenedRuntime:
    """OpenVINO's graphs at the spec's precision on its threads, once they keep torch fp32's
    labels (the checks' verdicts from the cache, or computed here)."""
    tiles = calibration_tiles(int(model.meta.tile_size), model.validation_patches)
    fp32 = OpenVINOGraphs(model, "fp32", spec.threads, spec.cpu_flags, cache)
    opened = OpenedRuntime(
        "openvino", spec.runtime_reason, "fp32", spec.precision_reason, "cpu", graphs=fp32
    )
    _check_fp32(opened, fp32, model, spec.geometry, tiles)
    if spec.precision == "fp32":
        return opened
    bf16 = OpenVINOGraphs(model, "bf16", spec.threads, spec.cpu_flags, cache)
    opened.graphs, opened.precision = bf16, "bf16"
    if spec.precision == BF16_IF_CALIBRATED:
        _calibrate_bf16(opened, model, fp32, bf16, tiles)
    return opened


def check_geometry(run: Geometry, tiles: int) -> Geometry:
    """Where the fp32 check runs on `tiles` calibration tiles: the run's own graph (a cold
    cache then exports one graph, not also one of whole tiles), unless its labels there are
    too few for the threshold to mean anything (a large output downsample), then whole tiles."""
    side = run.core // run.downsample
    if tiles * side * side >= MIN_CHECK_LABELS:
        return run
    return Geometry.whole(run.tile, run.gate)


def _check_fp32(
    opened: OpenedRuntime,
    fp32: OpenVINOGraphs,
    model: ModelSource,
    run: Geometry,
    tiles: np.ndarray,
) -> None:
    """OpenVINO's `fp32` graphs must keep torch fp32's labels on the calibration tiles (at
    `check_geometry`); `RuntimeUnavailable` otherwise."""
    geometry = check_geometry(run, len(tiles))

    def fp32_agreement() -> dict[str, Any]:
        from .executor import TorchExecutor  # the reference: a cold cache builds the network

        torch_labels = graph_labels(TorchExecutor(model.network(), geometry, "fp32"), tiles)
        ov_labels = graph_labels(OpenVINOExecutor(fp32, geometry), tiles)
        return {"agreement": compare_labels(torch_labels, ov_labels)[0]}

    checked = _checked(opened, fp32, "fp32_agreement", geometry, tiles, fp32_agreement)
    opened.fp32_agreement = float(checked["agreement"])
    if opened.fp32_agreement < MIN_AGREEMENT:
        raise RuntimeUnavailable(
            f"OpenVINO's fp32 graph kept only {100 * opened.fp32_agreement:.2f} % of torch's "
            "labels on the calibration tiles"
        )


def _calibrate_bf16(
    opened: OpenedRuntime,
    model: ModelSource,
    fp32: OpenVINOGraphs,
    bf16: OpenVINOGraphs,
    tiles: np.ndarray,
) -> None:
    """bf16-if-calibrated: OpenVINO bf16 against its fp32 on whole tiles (the calibration's
    measure, the same in torch), then bf16 or fp32 as the verdict says."""
    tile = int(model.meta.tile_size)
    whole, where = Geometry.whole(tile), CALIBRATION_WHERE["openvino"]
    executors = {low: OpenVINOExecutor(bf16 if low else fp32, whole) for low in (False, True)}

    def bf16_calibration() -> dict[str, Any]:
        own = model.validation_patches
        return calibration_numbers(
            calibrate_bf16(lambda x, low: graph_labels(executors[low], x), tile, where, own)
        )

    numbers = _checked(opened, bf16, "bf16_calibration", whole, tiles, bf16_calibration)
    calibration = calibration_of(numbers, "openvino")
    if not calibration.bf16_chosen:
        opened.graphs, opened.precision = fp32, "fp32"
    opened.calibration = calibration
    opened.precision_reason = calibration.reason()
    _log.info("precision auto: %s", opened.precision_reason)


def _checked(
    opened: OpenedRuntime,
    graphs: OpenVINOGraphs,
    check: str,
    geometry: Geometry,
    tiles: np.ndarray,
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """The numbers of `check` of `graphs` at `geometry` on `tiles` from the cache, else
    computed (counted in `opened.checks_computed`) and stored."""
    key = verdict_key(graphs, check, geometry, tiles)
    numbers = load_verdict(graphs.cache_dir, key, _CHECK_FIELDS[check])
    if numbers is not None:
        return numbers
    numbers = compute()
    opened.checks_computed += 1
    store_verdict(graphs.cache_dir, key, numbers)
    return numbers
