"""The one run policy: every choice that differs between machines, decided in one place.

`decide(machine, options, facts)` is a pure function of the machine's description
(`pipeline.machine.Machine`), the user's options (`SegmentParams`) and what the run knows of
its slide and place (`RunFacts`; no decision needs facts of the model yet: the model itself
runs what depends on it, the bf16 calibration and the GPU batch probe); it returns a
`ExecutionPlan` holding each decision with its reason: device, runtime, precision, chunk size,
batch size, compute threads, model lock, cores (the engine's, and its process's: OpenVINO's
threads), JPEG reads on the device, decoder processes and writer threads (the last three
in `pipeline.read_policy`). A local run
decides once in `prepare` (`pipeline.prepare`); a Dask run's client decides the slide's
plan there too and ships it to every band, whose worker decides only what depends on its
own machine, by the same function (`for_worker`, from `pipeline.inference.band_task`).
summary.json records the policies whole (`run_policy`). The code that runs a slide only
executes what the policy says.

Every decision changes speed only, but the precision (`bf16-if-calibrated`: bf16 where the
model passes the calibration on fixed tiles, which the loader runs) and `chunk_tiles`, which the stitching's
contract makes speed only too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import PlanMismatch
from wsi_segment.models.precision_calibration import PrecisionCalibration
from wsi_segment.models.runtimes.decision import (
    BF16_IF_CALIBRATED,
    precision_decision,
    runtime_decision,
)
from wsi_segment.models.runtimes.verdict import calibration_numbers, calibration_of
from wsi_segment.pipeline.engine_sizes import (
    batch_size_decision,
    chunk_tiles_decision,
    computes_decision,
    cores_decision,
    cuda_graphs_decision,
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
    polygon_processes_decision,
    read_device_decision,
    writers_decision,
)

if TYPE_CHECKING:
    from wsi_segment.models.runtimes.spec import RuntimeSpec
    from wsi_segment.models.runtimes.tile_io import Geometry

LOCAL, BAND, CLUSTER = "local", "band", "cluster"  # where the engine runs (`RunFacts.place`)


@dataclass(frozen=True)
class RunFacts:
    """What a run knows besides the machine and the options: its slide and its place (model
    facts go here once a decision needs them: a runtime that compiles some models only)."""

    place: str = LOCAL  # LOCAL: this process runs the engine; BAND: one band on a Dask
    # worker; CLUSTER: this process plans, the bands run on the workers (`for_worker`)
    at_once: int = 1  # engines sharing this machine: slides in flight, or a worker's bands
    reads: ReadFacts | None = None  # None: not examined (`wants_slide_reads` said no)
    daemonic: bool = False  # a daemonic Dask worker process, which may not start processes
    worker_bands: int = 1  # a band's: bands its worker process runs at once (they share its model)
    # the model's bf16 calibration numbers known for this machine, by runtime (a warm run:
    # from the cache, `known_calibration`; a cold one: its load's, or for a cluster the
    # load of one worker, `band_runner.settle_plan`): bf16-if-calibrated is then decided
    # here, bf16 or fp32
    calibrations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# A Dask run: what only a band's worker knows, set there (`for_worker`); every other fact
# (the calibrations) the client settled for the slide's plan.
WORKER_FACTS = ("at_once", "reads", "daemonic", "worker_bands")
# The decisions a band's `decide` makes from its worker's own machine (cores, GPUs) and
# WORKER_FACTS: the only ones that may differ between the bands of one slide. The others
# (runtime, precision and its calibration, chunk_tiles) are the shipped plan's, and a
# worker that would decide them otherwise refuses to run (`for_worker`).
WORKER_DECISIONS = (
    "device",
    "batch_size",
    "compute_threads",
    "model_lock",
    "cuda_graphs",
    "cores",
    "process_cores",
    "read_device",
    "decoders",
    "writers",
    "polygon_processes",
)
SLIDE_DECISIONS = ("runtime", "precision", "calibration", "chunk_tiles")  # the plan's alone


@dataclass(frozen=True)
class ExecutionPlan:
    """Every decision of one engine (a local run or a band), each with its reason."""

    machine: Machine
    place: str
    options: SegmentParams  # what the plan was decided for, and from (with `machine`)
    facts: RunFacts
    device: Decision[str]  # "cpu" | "cuda" (the first visible GPU)
    runtime: Decision[str]  # "torch" | "openvino" (models.runtimes)
    # handed to the model: "fp32" | "bf16" | "fp16" | "bf16-if-calibrated"
    precision: Decision[str]
    chunk_tiles: Decision[int]  # tiles per chunk side (the plan)
    batch_size: Decision[int]  # tiles per forward pass asked of the device
    compute_threads: Decision[int]  # forward passes side by side
    model_lock: Decision[bool]  # whether forward passes take the model's lock
    cuda_graphs: Decision[bool]  # torch on CUDA: each batch a replay of a captured graph
    cores: Decision[int]  # cores this engine's forward passes share (compute_threads_cores)
    process_cores: Decision[int]  # this process's engines together: OpenVINO's threads
    read_device: Decision[str]  # GPU: the device read path (reason: its JPEG decoder)
    decoders: Decision[int]  # decoder processes; 0: one reader thread
    writers: Decision[int]  # writer threads finishing whole chunks side by side
    polygon_processes: Decision[int]  # processes tracing the writers' polygons; 0: their threads
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


def decide(machine: Machine, options: SegmentParams, facts: RunFacts) -> ExecutionPlan:
    """The policy of one engine on `machine` for `options` and the run's `facts`; a pure
    function."""
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
    computes = computes_decision(options, cuda, band, cores.value)
    writers = writers_decision(options, cores.value, decoders.value, band)
    runtime = _runtime(machine, options, cuda)
    precision = _precision(options, machine, cuda, gpu, runtime.value)
    calibration = facts.calibrations.get(runtime.value)
    if precision.value != BF16_IF_CALIBRATED:
        calibration = None
    elif calibration is not None:
        precision = calibrated(calibration, runtime.value)
    return ExecutionPlan(
        machine=machine,
        place=facts.place,
        options=options,
        facts=facts,
        device=device,
        runtime=runtime,
        precision=precision,
        calibration=calibration,
        chunk_tiles=chunk_tiles_decision(options, cuda),
        batch_size=batch_size_decision(options, cuda, gpu),
        compute_threads=computes,
        model_lock=model_lock_decision(cuda, band, computes.value),
        cuda_graphs=cuda_graphs_decision(options, cuda),
        cores=cores,
        process_cores=process_cores,
        read_device=reads,
        decoders=decoders,
        writers=writers,
        polygon_processes=polygon_processes_decision(
            options, cuda, writers.value, band, facts.daemonic
        ),
    )


def decide_for_model(
    machine: Machine, options: SegmentParams, facts: RunFacts, model_dir: str
) -> ExecutionPlan:
    """`decide` for the model in `model_dir`, with the bf16 verdict an earlier load on this
    machine kept for it (`known_calibration`) where the plan would otherwise wait for one."""
    plan = decide(machine, options, facts)
    if plan.precision.value != BF16_IF_CALIBRATED:
        return plan
    return decide(machine, options, known_calibration(facts, plan, model_dir))


def waits_for_verdict(plan: ExecutionPlan) -> bool:
    """Whether `plan`'s precision is bf16-if-calibrated with no verdict known yet: the
    model's load obtains one (`settled`)."""
    return plan.precision.value == BF16_IF_CALIBRATED and plan.calibration is None


def settled(
    plan: ExecutionPlan, runtime: str, calibration: PrecisionCalibration | None
) -> ExecutionPlan:
    """`plan` decided again, by `decide`, with the bf16 calibration a model's load obtained
    (run in `runtime` on the plan's kind of machine): bf16-if-calibrated becomes bf16 or fp32
    with the verdict's reason. `plan` itself where it waited for none, or where the load ran
    without one in the plan's runtime (OpenVINO could not: torch at its fallback)."""
    if not waits_for_verdict(plan) or calibration is None or runtime != plan.runtime.value:
        return plan
    calibrations = {**plan.facts.calibrations, runtime: calibration_numbers(calibration)}
    facts = dataclasses.replace(plan.facts, calibrations=calibrations)
    return decide(plan.machine, plan.options, facts)


def for_worker(plan: ExecutionPlan, machine: Machine, **worker: Any) -> ExecutionPlan:
    """The slide's `plan` (a Dask run's, decided by the client) for one band on a worker
    whose own machine is `machine`: WORKER_DECISIONS decided there by `decide`, from the
    plan's facts with WORKER_FACTS set from the worker (`worker`; any other name is refused:
    the client settled it). Every other decision is the plan's, and must come out the same
    on this worker: one it would decide otherwise raises `PlanMismatch` naming it, never
    runs. Returns the plan with this worker's decisions, its machine and place."""
    foreign = sorted(set(worker) - set(WORKER_FACTS))
    if foreign:
        raise ValueError(f"settled for the whole cluster, not per worker: {foreign}")
    facts = dataclasses.replace(plan.facts, place=BAND, **worker)
    own = decide(machine, plan.options, facts)
    for name in SLIDE_DECISIONS:
        shipped, here = getattr(plan, name), getattr(own, name)
        if (name == "calibration" and shipped != here) or (
            name != "calibration" and shipped.value != here.value
        ):
            raise PlanMismatch(_mismatch(name, shipped, here, machine))
    ours = {name: getattr(own, name) for name in WORKER_DECISIONS}
    return dataclasses.replace(plan, machine=machine, place=BAND, facts=facts, **ours)


def _mismatch(name: str, shipped: Any, here: Any, machine: Machine) -> str:
    """`PlanMismatch`'s message: the decision, both answers, and how to make them agree."""
    show = (lambda d: d) if name == "calibration" else (lambda d: f"{d.value} ({d.reason})")
    return (
        f"a Dask worker ({machine.cores} cores, {len(machine.gpus)} GPUs) would decide the "
        f"slide's {name} as {show(here)}, the plan shipped to it says {show(shipped)}: the "
        "plan is decided for one worker's machine, and this one is unlike it; run the slide "
        "on workers of one kind, or ask for the decision (--device, --runtime, --precision, "
        "--chunk-tiles)"
    )


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
        return Decision("cpu", f"auto: {machine.gpu_trouble or 'no CUDA GPU'}")
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
    Dask cluster: with `workers=0`, and by default on a machine with one GPU or none (one
    compute stage for the device or the cores, decoders on every core, one loaded model for
    the slides in flight, without a cluster's start-up: a local cluster of one worker cost a
    one-slide batch 6 s more and gained nothing). Several GPUs keep one worker each."""
    if dask_address:
        return Decision(False, "--dask-address: bands on that cluster")
    if workers is not None:
        return Decision(workers == 0, f"asked for (workers={workers})")
    gpus = len(machine.gpus)
    if decide_device(machine, options).value != "cuda":
        return Decision(True, "no GPU in use: the engine in this process, without a cluster")
    if gpus == 1:
        return Decision(True, "one GPU: the engine in this process, without a cluster")
    return Decision(False, f"{gpus} GPUs: one worker each")


def _runtime(machine: Machine, options: SegmentParams, cuda: bool) -> Decision[str]:
    """Which runtime runs the inference graph (`models.runtimes.decision.runtime_decision`:
    OpenVINO on CPUs where it is installed, torch on GPUs). Whether OpenVINO then runs the
    model is the loader's to find out (it compiles and checks it against torch, and runs the
    spec's torch precision where it cannot: the same on every worker of a slide); the
    model's precision report in summary.json says what ran."""
    device_type = "cuda" if cuda else "cpu"
    runtime, reason = runtime_decision(
        options.runtime, device_type, machine.cpu_flags, machine.openvino
    )
    return Decision(runtime, reason.split(": ", 1)[-1])


def _precision(
    options: SegmentParams, machine: Machine, cuda: bool, gpu: Gpu | None, runtime: str
) -> Decision[str]:
    """What the forward passes run in (`models.runtimes.decision.precision_decision` for the
    runtime decided: fp32, bf16, fp16, or bf16 if the model passes the calibration, which
    the loader runs)."""
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
    chosen, reason = calibration_of(numbers, runtime).reason().split(": ", 1)
    return Decision(chosen, reason)


def runtime_spec(plan: ExecutionPlan, geometry: Geometry) -> RuntimeSpec:
    """What the model's loader carries out of `plan` (`models.runtimes.select.open_runtime`):
    the runtime and precision decided, torch's precision should OpenVINO not run the model
    (decided here too, by the same function), OpenVINO's threads (this process's cores),
    whether OpenVINO was asked for by name (then a model it cannot export is refused), and
    the slide's tile graph `geometry` (`tile_reader.tile_geometry`: what OpenVINO checks)."""
    from wsi_segment.models.runtimes.spec import RuntimeSpec

    fallback = plan.precision
    if plan.runtime.value != "torch":
        cuda = plan.device.value == "cuda"
        fallback = _precision(plan.options, plan.machine, cuda, None, "torch")
    return RuntimeSpec(
        runtime=plan.runtime.value,
        precision=plan.precision.value,
        geometry=geometry,
        fallback=fallback.value,
        threads=plan.process_cores.value,
        cpu_flags=plan.machine.cpu_flags,
        by_name=plan.options.runtime == "openvino",
        cuda_graphs=plan.cuda_graphs.value,
        runtime_reason=f"{plan.runtime.value}: {plan.runtime.reason}",
        precision_reason=f"{plan.precision.value}: {plan.precision.reason}",
        fallback_reason=f"{fallback.value}: {fallback.reason}",
        calibration=plan.calibration,
    )
