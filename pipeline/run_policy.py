"""The one run policy: every choice that differs between machines, decided in one place.

`decide(machine, options, facts)` is a pure function of the machine's description
(`pipeline.machine.Machine`), the user's options (`SegmentParams`) and what the run knows of
its slide and place (`RunFacts`; no decision needs facts of the model yet: the model itself
runs what depends on it, the bf16 calibration and the GPU batch probe); it returns a
`ExecutionPlan` holding each decision with its reason: device, runtime, precision, chunk size,
batch size, compute threads, model lock, cores (the engine's, and its process's: OpenVINO's
threads), JPEG reads on the device, decoder processes and writer threads (the last three
in `pipeline.read_policy`). A local run
decides once in `prepare` (`pipeline.prepare`), every Dask band decides on its worker from
that worker's machine and the same options (`pipeline.inference.band_task`), and
summary.json records the policies whole (`run_policy`). The code that runs a slide only
executes what the policy says.

Every decision changes speed only, but the precision (`bf16-if-calibrated`: bf16 where the
model passes the calibration on fixed tiles, which the loader runs) and `chunk_tiles`, which the stitching's
contract makes speed only too.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from wsi_segment.models.precision_calibration import PrecisionCalibration
from wsi_segment.models.runtimes.decision import (
    BF16_IF_CALIBRATED,
    precision_decision,
    runtime_decision,
)
from wsi_segment.models.runtimes.verdict import CALIBRATION_WHERE
from wsi_segment.pipeline.engine_sizes import (
    batch_size_decision,
    chunk_tiles_decision,
    computes_decision,
    cores_decision,
    model_lock_decision,
)
from wsi_segment.pipeline.machine import GIB, Gpu, Machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.read_policy import (
    CPU,
    DAEMONIC,
    GPU,
    Decision,
    JpegDecoder,
    ReadFacts,
    decoders_decision,
    read_device_decision,
    writers_decision,
)

if TYPE_CHECKING:
    from wsi_segment.models.runtimes.spec import RuntimeSpec

LOCAL, BAND, CLUSTER = "local", "band", "cluster"  # where the engine runs (`RunFacts.place`)


@dataclass(frozen=True)
class RunFacts:
    """What a run knows besides the machine and the options: its slide and its place (model
    facts go here once a decision needs them: a runtime that compiles some models only)."""

    place: str = LOCAL  # LOCAL: this process runs the engine; BAND: one band on a Dask
    # worker; CLUSTER: this process plans, the bands run (and decide) on the workers
    at_once: int = 1  # engines sharing this machine: slides in flight, or a worker's bands
    reads: ReadFacts | None = None  # None: not examined (`wants_slide_reads` said no)
    # a band's precision for `--precision auto`: the answer one CPU worker's calibration
    # pinned for the whole cluster (`band_runner.settle_precision`); None: none pinned
    pinned_precision: str | None = None
    # a band's runtime for `--runtime auto`: what that worker ran, pinned alike; None: none
    pinned_runtime: str | None = None
    daemonic: bool = False  # a daemonic Dask worker process, which may not start processes
    worker_bands: int = 1  # a band's: bands its worker process runs at once (they share its model)
    # the model's bf16 calibration numbers known for this machine, by runtime (a warm run:
    # from the cache, `known_calibration`; a cold one: its load's, or the one CPU
    # worker's for a cluster): bf16-if-calibrated is then decided here, bf16 or fp32
    calibrations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# A Dask run: what only a band's worker knows, set there (`band_facts`); every other fact
# (the pinned runtime and precision, the calibrations) the client settled for all bands.
WORKER_FACTS = ("at_once", "reads", "daemonic", "worker_bands")
# The decisions a band's `decide` makes from its worker's own machine (cores, GPUs) and
# WORKER_FACTS: the only ones that may differ between the bands of one slide. The others
# (runtime, precision and its calibration, chunk_tiles) come out of the settled facts and
# the run's options alike on every worker, so a slide never mixes them.
WORKER_DECISIONS = (
    "device",
    "batch_size",
    "compute_threads",
    "model_lock",
    "cores",
    "process_cores",
    "read_device",
    "decoders",
    "writers",
)


def band_facts(settled: RunFacts, **worker: Any) -> RunFacts:
    """A band's facts on its worker: the client's `settled` facts with WORKER_FACTS set
    from the worker (any other name is refused: the client settled it)."""
    foreign = sorted(set(worker) - set(WORKER_FACTS))
    if foreign:
        raise ValueError(f"settled for the whole cluster, not per worker: {foreign}")
    return dataclasses.replace(settled, place=BAND, **worker)


@dataclass(frozen=True)
class ExecutionPlan:
    """Every decision of one engine (a local run or a band), each with its reason."""

    machine: Machine
    place: str
    device: Decision[str]  # "cpu" | "cuda" (the first visible GPU)
    runtime: Decision[str]  # "torch" | "openvino" (models.runtimes)
    # handed to the model: "fp32" | "bf16" | "fp16" | "bf16-if-calibrated"
    precision: Decision[str]
    chunk_tiles: Decision[int]  # tiles per chunk side (the plan)
    batch_size: Decision[int]  # tiles per forward pass asked of the device
    compute_threads: Decision[int]  # forward passes side by side
    model_lock: Decision[bool]  # whether forward passes take the model's lock
    cores: Decision[int]  # cores this engine's forward passes use (torch threads)
    process_cores: Decision[int]  # this process's engines together: OpenVINO's threads
    read_device: Decision[str]  # GPU: the device read path (reason: its JPEG decoder)
    decoders: Decision[int]  # decoder processes; 0: one reader thread
    writers: Decision[int]  # writer threads finishing whole chunks side by side
    # the bf16 calibration's numbers `precision` was decided from; None: it needed none, or
    # none is known yet (precision bf16-if-calibrated: the model's load obtains it)
    calibration: Mapping[str, Any] | None = None

    @property
    def device_decoder(self) -> JpegDecoder | None:
        """The device read path's JPEG decoder ("nvjpeg" / "libjpeg"), None without it."""
        if self.read_device.value != GPU:
            return None
        return "nvjpeg" if self.read_device.reason == "nvjpeg" else "libjpeg"

    @property
    def decoders_refused(self) -> bool:
        """Decoders were due, but this daemonic Dask worker may not start them."""
        return self.decoders.reason.startswith(DAEMONIC)

    @property
    def read_source(self) -> str:
        """What reads the tiles: the device read path, decoder processes or a reader thread."""
        if self.read_device.value == GPU:
            return "device read path"
        return "decoder processes" if self.decoders.value else "reader thread"

    def read_report(self) -> dict[str, str]:
        """summary.json run_stats' read choice: read_device and read_device_reason."""
        return {
            "read_device": self.read_device.value,
            "read_device_reason": self.read_device.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        """summary.json `run_policy`: every decision with its reason, and the machine."""
        out: dict[str, Any] = {"place": self.place, "machine": self.machine.as_dict()}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Decision):
                out[f.name] = value.as_dict()
        out["read_source"] = self.read_source
        out["calibration"] = None if self.calibration is None else dict(self.calibration)
        return out


def decide(
    machine: Machine, options: SegmentParams, facts: RunFacts | None = None
) -> ExecutionPlan:
    """The policy of one engine on `machine` for `options`; a pure function."""
    facts = facts or RunFacts()
    device = decide_device(machine, options)
    cuda = device.value == "cuda"
    gpu = machine.gpus[0] if cuda and machine.gpus else None
    at_once = max(1, facts.at_once)
    band = facts.place == BAND
    cores, process_cores = cores_decision(machine, band, at_once, max(1, facts.worker_bands))
    reads = read_device_decision(options, cuda, gpu, facts.reads)
    decoders = decoders_decision(options, machine, cuda, reads.value == GPU, band, at_once)
    if decoders.value and facts.daemonic:
        decoders = Decision(0, f"{DAEMONIC}; {decoders.value} were due ({decoders.reason})")
    computes = computes_decision(options, cuda, band)
    runtime = _runtime(machine, options, cuda, facts.pinned_runtime)
    precision = _precision(options, machine, cuda, gpu, runtime.value, facts.pinned_precision)
    calibration = facts.calibrations.get(runtime.value)
    if precision.value != BF16_IF_CALIBRATED:
        calibration = None
    elif calibration is not None:
        precision = calibrated(calibration, runtime.value)
    return ExecutionPlan(
        machine=machine,
        place=facts.place,
        device=device,
        runtime=runtime,
        precision=precision,
        calibration=calibration,
        chunk_tiles=chunk_tiles_decision(options, cuda),
        batch_size=batch_size_decision(options, cuda, gpu),
        compute_threads=computes,
        model_lock=model_lock_decision(cuda, band, computes.value),
        cores=cores,
        process_cores=process_cores,
        read_device=reads,
        decoders=decoders,
        writers=writers_decision(options, cores.value, decoders.value, band),
    )


def decide_for_model(
    machine: Machine, options: SegmentParams, facts: RunFacts, model_dir: str
) -> tuple[ExecutionPlan, RunFacts]:
    """`decide` for the model in `model_dir`, with the bf16 verdict an earlier load on this
    machine kept for it (`known_calibration`) where the plan would otherwise wait for one;
    returns the plan and the facts it was decided from."""
    plan = decide(machine, options, facts)
    if plan.precision.value != BF16_IF_CALIBRATED:
        return plan, facts
    facts = known_calibration(facts, plan, model_dir)
    return decide(machine, options, facts), facts


def known_calibration(facts: RunFacts, plan: ExecutionPlan, model_dir: str) -> RunFacts:
    """`facts` with the model's bf16 calibration in `plan`'s runtime on its machine, where an
    earlier load obtained and kept it (`models.runtimes.verdict`; no torch)."""
    from wsi_segment.models.runtimes.verdict import kept_calibration

    runtime = plan.runtime.value
    numbers = kept_calibration(model_dir, runtime, plan.machine.cpu_flags)
    if numbers is None:
        return facts
    return dataclasses.replace(facts, calibrations={**facts.calibrations, runtime: numbers})


def decide_device(machine: Machine, options: SegmentParams) -> Decision[str]:
    """`--device`: cpu or cuda as asked (a missing GPU is the model loader's error, which
    names the fix); auto takes the first GPU where there is one."""
    if options.device != "auto":
        return Decision(options.device, f"asked for (--device {options.device})")
    if not machine.gpus:
        return Decision("cpu", "auto: no CUDA GPU")
    gpu = machine.gpus[0]
    many = f"the first of {len(machine.gpus)} GPUs" if len(machine.gpus) > 1 else "the GPU"
    return Decision("cuda", f"auto: {many}, {gpu.name} ({gpu.memory_bytes / GIB:.0f} GiB)")


def wants_slide_reads(machine: Machine, options: SegmentParams) -> bool:
    """Whether `decide` may choose the device read path, so the caller must examine the
    slide's read level first (`RunFacts.reads`; reading its JPEG header costs a file open)."""
    if options.read_device == CPU:
        return False
    return options.read_device == GPU or decide_device(machine, options).value == "cuda"


def engine_in_process(
    machine: Machine, options: SegmentParams, workers: int | None, dask_address: str | None
) -> Decision[bool]:
    """Whether a batch runs its slides' engines in this process rather than in bands on a
    Dask cluster: with `workers=0`, and by default on a machine with one GPU (one compute
    stage for the device, decoders on every core, one loaded model for the slides in flight,
    without a cluster's start-up). Several GPUs keep one worker each; CPUs a local cluster."""
    if dask_address:
        return Decision(False, "--dask-address: bands on that cluster")
    if workers is not None:
        return Decision(workers == 0, f"asked for (workers={workers})")
    one_gpu = decide_device(machine, options).value == "cuda" and len(machine.gpus) == 1
    if one_gpu:
        return Decision(True, "one GPU: the engine in this process, without a cluster")
    gpus = len(machine.gpus)
    where = f"{gpus} GPUs: one worker each" if gpus > 1 else "no GPU: a local CPU cluster"
    return Decision(False, where)


def _runtime(
    machine: Machine, options: SegmentParams, cuda: bool, pinned: str | None
) -> Decision[str]:
    """Which runtime runs the inference graph (`models.runtimes.decision.runtime_decision`:
    OpenVINO on CPUs where it is installed, torch on GPUs). Whether OpenVINO then runs the
    model is the loader's to find out (it compiles and checks it against torch); the model's
    precision report in summary.json says what ran."""
    if pinned is not None:
        return Decision(pinned, "auto, pinned for the cluster by the runtime one worker ran")
    device_type = "cuda" if cuda else "cpu"
    runtime, reason = runtime_decision(
        options.runtime, device_type, machine.cpu_flags, machine.openvino
    )
    return Decision(runtime, reason.split(": ", 1)[-1])


def _precision(
    options: SegmentParams,
    machine: Machine,
    cuda: bool,
    gpu: Gpu | None,
    runtime: str,
    pinned: str | None,
) -> Decision[str]:
    """What the forward passes run in (`models.runtimes.decision.precision_decision` for the
    runtime decided: fp32, bf16, fp16, or bf16 if the model passes the calibration, which
    the loader runs). A band takes the answer one CPU worker's calibration pinned."""
    pin = "auto, pinned for the cluster by one CPU worker's calibration"
    if options.precision == "auto" and pinned == "fp32":
        return Decision("fp32", pin)
    if options.precision == "auto" and pinned == "bf16" and not cuda:
        return Decision("bf16", pin)  # a GPU worker of a mixed cluster keeps its own auto
    device_type = "cuda" if cuda else "cpu"
    value, reason = precision_decision(
        options.precision,
        device_type,
        runtime,
        machine.cpu_flags,
        gpu is not None and gpu.bf16,
        gpu.name if gpu is not None else "",
    )
    return Decision(value, reason.split(": ", 1)[-1])


def calibrated(numbers: Mapping[str, Any], runtime: str) -> Decision[str]:
    """bf16-if-calibrated decided: bf16 or fp32 as the calibration's `numbers` (measured in
    `runtime` on this machine) pass today's thresholds, with its reason."""
    verdict = PrecisionCalibration(**numbers, where=CALIBRATION_WHERE[runtime])
    chosen, reason = verdict.reason().split(": ", 1)
    return Decision(chosen, reason)


def runtime_spec(plan: ExecutionPlan, options: SegmentParams) -> RuntimeSpec:
    """What the model's loader carries out of `plan` (`models.runtimes.select.open_runtime`):
    the runtime and precision decided, torch's precision should OpenVINO not run the model
    (decided here too, by the same function), OpenVINO's threads (this process's cores) and
    whether OpenVINO was asked for by name (then a model it cannot export is refused)."""
    from wsi_segment.models.runtimes.spec import RuntimeSpec

    fallback = plan.precision
    if plan.runtime.value != "torch":
        fallback = _precision(
            options, plan.machine, plan.device.value == "cuda", None, "torch", None
        )
    return RuntimeSpec(
        runtime=plan.runtime.value,
        precision=plan.precision.value,
        fallback=fallback.value,
        threads=plan.process_cores.value,
        cpu_flags=plan.machine.cpu_flags,
        by_name=options.runtime == "openvino",
        runtime_reason=f"{plan.runtime.value}: {plan.runtime.reason}",
        precision_reason=f"{plan.precision.value}: {plan.precision.reason}",
        fallback_reason=f"{fallback.value}: {fallback.reason}",
        calibration=plan.calibration,
    )


def band_policies(chunk_tiles: Decision[int], bands: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """summary.json `run_policy` of a Dask run: the chunk size, decided where the slide was
    planned, and each distinct policy the bands decided on their workers (`as_dict`), with
    the bands (in plan order) that ran it."""
    distinct: dict[str, dict[str, Any]] = {}
    for k, policy in enumerate(bands):
        entry = distinct.setdefault(json.dumps(policy, sort_keys=True), {"bands": [], **policy})
        entry["bands"].append(k)
    return {
        "place": CLUSTER,
        "chunk_tiles": chunk_tiles.as_dict(),
        "band_policies": list(distinct.values()),
    }
