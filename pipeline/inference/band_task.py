"""One band of a slide on a Dask worker: the engine over a run of contiguous chunks.

The band decides on its worker only what depends on that worker's machine
(`pipeline.run_policy.for_worker`), then runs `run_engine` as the plan says, with the
worker's model (loaded once per process, shared under its lock) and the read source the plan
names; it returns its plan for summary.json. A *daemonic* worker may not start processes
(our local clusters start them non-daemonic: `flows.dask_cluster`), so there the plan gives a
band no decoders (it reads in a thread: the same bytes) and the band warns with the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import BandAborted, WsiSegmentError
from wsi_segment.pipeline.cancellation import Cancellation
from wsi_segment.pipeline.inference.engine import EngineSizes, build_executor, run_engine
from wsi_segment.pipeline.inference.engine_state import EngineStats
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.read_sources import plan_source, slide_reads
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.machine import probe_machine
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.read_policy import ReadFacts
from wsi_segment.pipeline.run_policy import (
    ExecutionPlan,
    for_worker,
    runtime_spec,
    wants_slide_reads,
)
from wsi_segment.wsi.shown_path import shown_slide_path
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from distributed import Event

    from wsi_segment.models.precision_calibration import PrecisionCalibration
    from wsi_segment.wsi.raw_tiles import JpegTiles

log = logging.getLogger(__name__)

ABORT_POLL_S = 0.5  # how soon a running band notices that another band failed
DAEMON_FIX = (
    "start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False in their environment "
    "(Dask config distributed.worker.daemon: false) so each band can start decoder processes"
)


@dataclass
class BandResult:
    """What one band returns to the client (a value, so Dask retries only real crashes)."""

    outcomes: list[ChunkOutcome]
    decoders: int  # decoder processes the band ran with; 0: a reader thread
    error: BaseException | None = None  # bad input (a WsiSegmentError): fails the slide
    aborted: bool = False  # the slide failed elsewhere; this band stopped or never started
    reads: dict[str, str] = field(default_factory=dict)  # the read choice, for summary.json
    daemonic: bool = False  # decoders were due on a daemonic worker: read in a thread
    policy: dict[str, Any] = field(default_factory=dict)  # its run policy, for summary.json
    runtime: dict[str, object] = field(default_factory=dict)  # what its model ran in, and why


def band_plan(
    job: SlideJob,
    plan: ExecutionPlan,
    in_flight: int,
    examine: bool = True,
    worker_bands: int = 1,
) -> tuple[ExecutionPlan, SlideJob, JpegTiles | None]:
    """The shipped `plan` for this band on this worker (`run_policy.for_worker`): decided
    here from the worker's machine, the `in_flight` bands sharing it (`worker_bands` of them
    on this process's one model), whether it is daemonic and (`examine`) the slide's read
    level. Returns that plan, the job that carries it out and the tiles the device read path
    reads, if it does."""
    machine = probe_machine()
    reader = job.reader
    reads: ReadFacts | None = None
    tiles = None
    if examine and wants_slide_reads(machine, plan.options):
        try:
            reads, tiles = slide_reads(
                job.slide_path, reader.slide(), (reader.read_level, reader.level0_per_model)
            )
        finally:
            reader.close_local()
    daemonic = mp.current_process().daemon
    band = for_worker(
        plan, machine, at_once=in_flight, reads=reads, daemonic=daemonic, worker_bands=worker_bands
    )
    had = job.model
    spec = runtime_spec(band, had.spec.geometry)
    model = ModelHandle(had.model_dir, band.device.value, spec, had.identity)
    job = dataclasses.replace(
        job,
        model=had if model == had else model,  # by value: a reworded reason loads nothing
        _local=threading.local(),
    )
    return band, job, tiles if band.device_decoder is not None else None


def band_calibration(
    job: SlideJob, plan: ExecutionPlan, gpu: bool, at_once: dict[str, int]
) -> tuple[str, PrecisionCalibration | None]:
    """This worker's model opened as a band's plan says (`gpu`, `at_once` as `run_band`'s):
    the runtime it runs in and the bf16 calibration its load obtained (`settle_plan`)."""
    _plan, job, _tiles = _band_plan_here(job, plan, gpu, at_once, examine=False)
    opened = job.model.get().runtime
    return opened.runtime, opened.calibration


def run_band(
    job: SlideJob,
    specs: list[ChunkSpec],
    abort: str | None,
    plan: ExecutionPlan,
    gpu: bool,
    at_once: dict[str, int] | None = None,
) -> BandResult:
    """Dask task: run `specs` (contiguous chunks) through the engine on this worker as
    `plan` says. `abort`: the slide's distributed Event (None: not on a cluster); `gpu`: the
    band holds the worker's GPU resource; `at_once`: bands that may run at once per host."""
    event = None
    if abort is not None:
        from distributed import Event

        event = Event(abort)
        if event.is_set():
            return BandResult([], 0, aborted=True)
    try:
        policy, job, tiles = _band_plan_here(job, plan, gpu, at_once, examine=True)
        daemonic = policy.decoders_refused
        sizes = EngineSizes.of(policy)  # on its share of the worker's cores (the plan's)
        stop = Cancellation()
        with _watching(event, stop):  # an abort during the model's load is seen at once too
            executor = build_executor(job.model, job.geometry, sizes)
            source = plan_source(policy, job.model, job.reader, tiles)
            try:
                if daemonic:
                    log.warning("%s: this Dask worker is daemonic, reading in a thread; %s",
                                shown_slide_path(job.slide_path), DAEMON_FIX)  # fmt: skip
                stats = EngineStats()  # a band's figures are not reported
                outcomes = run_engine(job, specs, source, executor, sizes, stats, cancel=stop)
            finally:
                source.close()  # run_engine closed it, unless an interrupt came first
        return BandResult(
            outcomes,
            source.processes,
            reads=policy.read_report(),
            daemonic=daemonic,
            policy=policy.as_dict(),
            runtime=job.model.get().report(),
        )
    except BandAborted:
        return BandResult([], 0, aborted=True)
    except WsiSegmentError as exc:
        return BandResult([], 0, error=exc)


def drop_cancelled_notice(record: logging.LogRecord) -> bool:
    """Log filter: drop the worker's "Async instruction for <Task cancelled ...> ended with
    CancelledError" warnings, which only repeat what the client reports once."""
    message = record.getMessage()
    return not (message.startswith("Async instruction for") and "CancelledError" in message)


def quiet_cancelled_tasks() -> None:
    """Install `drop_cancelled_notice` on this worker's task-state logger (once a process);
    every other warning of the worker stays."""
    state_machine = logging.getLogger("distributed.worker.state_machine")
    if drop_cancelled_notice not in state_machine.filters:
        state_machine.addFilter(drop_cancelled_notice)


def _band_plan_here(
    job: SlideJob, plan: ExecutionPlan, gpu: bool, at_once: dict[str, int] | None, examine: bool
) -> tuple[ExecutionPlan, SlideJob, JpegTiles | None]:
    """`band_plan` for this worker: `at_once` for its host, else its own bands (1 with the
    GPU resource, else its threads); 1 and 1 outside a worker."""
    from distributed import get_worker
    from distributed.comm import get_address_host

    quiet_cancelled_tasks()
    try:
        worker = get_worker()
    except ValueError:  # not inside a worker (a direct call)
        return band_plan(job, plan, 1, examine, 1)
    own = 1 if gpu else max(1, int(worker.state.nthreads))
    in_flight = max(1, (at_once or {}).get(get_address_host(worker.address), 0) or own)
    return band_plan(job, plan, in_flight, examine, own)


@contextlib.contextmanager
def _watching(event: Event | None, stop: Cancellation) -> Iterator[None]:
    """Cancel `stop` once the cluster-wide `event` is set, until the block ends."""
    if event is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                if event.wait(timeout=ABORT_POLL_S):
                    stop.cancel(BandAborted)
                    return
            except Exception:  # the scheduler briefly unreachable: ask again shortly
                done.wait(ABORT_POLL_S)

    thread = threading.Thread(target=watch, name="band-abort-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
