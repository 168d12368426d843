"""One band of a slide on a Dask worker: the engine over a run of contiguous chunks.

The client decided the slide's plan and ships it with every band; the band decides on its
worker only what depends on that worker's own machine, by the same function, and checks
the rest comes out as shipped (`band_plan`: `pipeline.run_policy.for_worker`). It then runs
`run_engine` as that plan says: the worker's model (loaded once per worker process, shared
under its lock like the slides of a local batch) on the plan's device and precision, and
the read source it names (`pipeline.inference.read_sources.plan_source`, as a local run's):
the device read path, decoder processes, or the reader thread. The band returns its plan
for summary.json. A worker process that is
*daemonic* may not start processes (Python refuses: its children would be orphaned when it
is terminated). Dask starts workers daemonic unless `distributed.worker.daemon` is False;
our local clusters turn it off (`flows.dask_cluster`), for workers started by hand set
`DASK_DISTRIBUTED__WORKER__DAEMON=False`. On a daemonic worker the plan gives a band no
decoders (it reads in its reader thread: the same bytes); the band logs a warning naming the
setting.
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
from wsi_segment.pipeline.inference.engine import run_engine, torch_threads
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.read_device import slide_reads
from wsi_segment.pipeline.inference.read_sources import plan_source
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
    """The slide's `plan`, shipped by the client, for this band on this worker
    (`pipeline.run_policy.for_worker`): what depends on the worker's own machine decided
    here by the same function, from its machine, the `in_flight` bands sharing it
    (`worker_bands` of them in this process, on its one model), whether it is daemonic and
    (`examine`) the slide's read level. Returns that plan, the job that carries it out (the
    model on its device with its runtime spec, its batch size) and the tiles the device read
    path reads, if it does."""
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
    model = ModelHandle(had.model_dir, band.device.value, runtime_spec(band), had.identity)
    job = dataclasses.replace(
        job,
        model=had if model == had else model,  # by value: a reworded reason loads nothing
        batch_size=band.batch_size.value,
        _local=threading.local(),
    )
    return band, job, tiles if band.device_decoder is not None else None


def band_calibration(
    job: SlideJob, plan: ExecutionPlan, gpu: bool = False, at_once: dict[str, int] | None = None
) -> tuple[str, PrecisionCalibration | None]:
    """This worker's model opened as a band's plan says (`band_plan`; `gpu`, `at_once`: as
    `run_band`'s, so the model loaded here is the one the bands then run): the runtime it
    runs in, and the bf16 calibration its load obtained where the plan waited for one. A
    cluster asks one worker (`band_runner.settle_plan`) and decides the slide's plan with it,
    so every chunk, recomputed ones included, runs in the same precision."""
    quiet_cancelled_tasks()
    in_flight, own = _bands_here(gpu, at_once or {})
    _plan, job, _tiles = band_plan(job, plan, in_flight, False, own)
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
    """Dask task: run `specs` (contiguous chunks) through the engine on this worker, as
    the slide's `plan` says, for this worker (`band_plan`).

    `abort`: name of the slide's distributed Event (None: not on a cluster); `gpu`: the
    band holds the worker's GPU resource, so it is the only band running there;
    `at_once`: bands that may run at once on each host (the workers of one machine share
    its cores; default: this worker's threads, or 1 with `gpu`)."""
    quiet_cancelled_tasks()
    event = None
    if abort is not None:
        from distributed import Event

        event = Event(abort)
        if event.is_set():
            return BandResult([], 0, aborted=True)
    in_flight, own = _bands_here(gpu, at_once or {})
    try:
        policy, job, tiles = band_plan(job, plan, in_flight, True, own)
        daemonic = policy.decoders_refused
        source = plan_source(policy, job.model, job.reader, tiles)
        try:
            if daemonic:
                log.warning("%s: this Dask worker is daemonic, reading in a thread; %s",
                            job.slide_path, DAEMON_FIX)  # fmt: skip
            stop = Cancellation()
            with _watching(event, stop), torch_threads(policy.cores.value):
                # side by side with the worker's other bands, each on its share of the cores
                outcomes = run_engine(
                    job,
                    specs,
                    source,
                    cancel=stop,
                    writers=policy.writers.value,
                    computes=policy.compute_threads.value,
                    locked=policy.model_lock.value,
                )
        finally:
            source.close()  # run_engine closed it, unless an interrupt came first
        return BandResult(
            outcomes,
            source.processes,
            reads=policy.read_report(),
            daemonic=daemonic,
            policy=policy.as_dict(),
            runtime=job.model.get().runtime.report(),
        )
    except BandAborted:
        return BandResult([], 0, aborted=True)
    except WsiSegmentError as exc:
        return BandResult([], 0, error=exc)


class _CancelledTaskNotice(logging.Filter):
    """Drops the worker's "Async instruction for <Task cancelled ...> ended with
    CancelledError" warnings: a band cancelled because the run was interrupted, or another
    band failed, is reported once by the client (the `error:` line, the batch table); the
    worker's own line, printed straight to the terminal, only repeats it as noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Async instruction for") and "CancelledError" in message)


def quiet_cancelled_tasks() -> None:
    """Install `_CancelledTaskNotice` on this worker's task-state logger (once a process);
    every other warning of the worker stays."""
    state_machine = logging.getLogger("distributed.worker.state_machine")
    if not any(isinstance(f, _CancelledTaskNotice) for f in state_machine.filters):
        state_machine.addFilter(_CancelledTaskNotice())


def _bands_here(gpu: bool, at_once: dict[str, int]) -> tuple[int, int]:
    """Bands sharing this machine's cores (`at_once` for this worker's host, else this
    worker's own), and this worker's own: 1 with the GPU resource, else its threads; 1 and
    1 outside a worker."""
    from distributed import get_worker
    from distributed.comm import get_address_host

    try:
        worker = get_worker()
    except ValueError:  # not inside a worker (a direct call)
        return 1, 1
    own = 1 if gpu else max(1, int(worker.state.nthreads))
    return max(1, at_once.get(get_address_host(worker.address), 0) or own), own


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
