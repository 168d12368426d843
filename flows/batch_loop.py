"""The one batch loop: plan the slides, run each, keep its record, write the morning report.

Plain functions, no Prefect: two doors run them (`BatchDoor`). The terminal's `wsi-segment
batch` runs them in this process as they are (`flows.terminal_batch`); the Prefect flow
(`flows.batch_flow.segment_batch`: deployments, schedules, alerts, the UI) hands in its run
logger and runs each slide as a task. What a door decides is only where its lines go, the
words of its advice, and how a slide runs in its thread; everything else is here, once.

Slides run concurrently up to `concurrency` (threads of this process, each driving one
slide's stages); their chunks all go to one Dask cluster, or run in this process through
the engine (`pipeline.run_policy.engine_in_process`), where the slides in flight share the
machine's decoder processes and take turns on the one model. A slide that fails is recorded
with its error and the others go on; finished slides are skipped (the pipeline's up-to-date
check, made for every slide before any starts), so rerunning after a crash resumes; a slide
that failed before and has not changed since is not retried unless asked
(`pipeline.known_failures`). Ctrl-C, SIGTERM and SIGHUP stop the slides in flight and raise
the batch's interrupt with every slide's result (`flows.batch_interrupt`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import TERMINATING_SIGNALS, ConfigError, SlideStopped, WsiSegmentError
from wsi_segment.flows.batch_interrupt import group_signal_as_stop, stopped_result, wait_for_slides
from wsi_segment.flows.daemon_threads import daemon_pool
from wsi_segment.flows.dropped_stops import DroppedStops
from wsi_segment.flows.slide_watch import SlideWatch
from wsi_segment.pipeline.batch_inputs import (
    BatchItem,
    check_regions,
    params_for,
    parse_batch_input,
)
from wsi_segment.pipeline.inference.decode_pool import start_resource_tracker
from wsi_segment.pipeline.known_failures import error_class_of, known_failures, settle_records
from wsi_segment.pipeline.machine import probe_machine
from wsi_segment.pipeline.morning_report import BatchReport, MorningReport
from wsi_segment.pipeline.outputs.shared_access import refuse_unusable_root
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.run_policy import engine_in_process
from wsi_segment.pipeline.segment import SlideResult, up_to_date_result
from wsi_segment.pipeline.up_to_date import ModelFiles, model_files
from wsi_segment.wsi.shown_path import shown_slide_path

if TYPE_CHECKING:
    from distributed import Client

    from wsi_segment.pipeline.cancellation import CancelToken

BATCH_LOGGER = "wsi_segment.batch"  # the batch's own lines (its start, each ended slide)
Log = logging.Logger | logging.LoggerAdapter[Any]
# One slide's stages: (slide, out root, its params, cluster, slides in flight, its stop)
RunSlide = Callable[[str, str, SegmentParams, "Client | None", int, "CancelToken"], SlideResult]


@dataclass(frozen=True)
class BatchRequest:
    """What a batch is asked to do: the CLI's options, or the flow's parameters."""

    input: str
    out: str
    params: SegmentParams
    dask_address: str | None = None
    workers: int | None = None  # local Dask workers (None: the run policy's default)
    concurrency: int = 2
    retry_failed: bool = False
    slide_timeout: float | None = None
    # a cluster the batch starts only once a slide is to run (SLURM jobs: no job is submitted
    # for a batch that is all finished), yielding its scheduler's address
    scheduler: Callable[[], contextlib.AbstractContextManager[str]] | None = None

    def __post_init__(self) -> None:
        """Refuse limits no batch can run under (`ConfigError`), before any slide is read."""
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1 (got {self.concurrency})")
        if self.slide_timeout is not None and not self.slide_timeout > 0:
            raise ConfigError(f"slide_timeout must be > 0 seconds (got {self.slide_timeout})")


@dataclass(frozen=True)
class SlideJob:
    """One slide to run, with what the batch shares with every slide."""

    item: BatchItem
    index: int
    out: str
    params: SegmentParams
    client: Client | None
    watch: SlideWatch
    at_once: int  # slides in flight in this process (their run policies share its decoders)


@dataclass(frozen=True)
class BatchDoor:
    """What differs between the terminal's batch and the Prefect flow's."""

    log: Log  # the batch's own lines
    # one slide, to its result, in its thread (`run_slide_job` with the door's stages and
    # words; the flow's as a task)
    run_slide: Callable[[SlideJob], SlideResult]
    warnings_to_log: Callable[[], contextlib.AbstractContextManager[None]]
    log_slide_warnings: Callable[[SlideResult], None]


@dataclass
class BatchPlan:
    """The slides and what is decided for them before any runs."""

    items: list[BatchItem]
    model: ModelFiles | None
    finished: dict[int, SlideResult]  # by index: up to date, known failures; then each ended
    in_process: bool  # chunks through the engine in this process, not on a Dask cluster
    at_once: int
    morning: BatchReport = field(repr=False)

    @property
    def todo(self) -> list[int]:
        return [i for i in range(len(self.items)) if i not in self.finished]


def run_batch(
    request: BatchRequest, door: BatchDoor
) -> tuple[list[SlideResult], MorningReport | None]:
    """Every slide's result in input order, and the morning report written at the end (None
    if it could not be: its warning was logged). Raises the batch's interrupt on a stop."""
    with contextlib.ExitStack() as stack:
        # a stop whose exception Python drops before the slides start (reading the input, the
        # up-to-date scan, the cluster's start) stops the batch before any starts
        dropped = stack.enter_context(DroppedStops())
        plan = plan_batch(request, door)
        stack.enter_context(door.warnings_to_log())
        dropped.raise_noted()  # before a cluster starts, or a batch all up to date ends
        if plan.todo:  # no cluster starts for a batch that is all finished
            address = request.dask_address
            if request.scheduler is not None:
                address = stack.enter_context(request.scheduler())
            client = stack.enter_context(dask_context(address, request.workers, plan.in_process))
            watch = stack.enter_context(SlideWatch(request.slide_timeout))
            dropped.raise_noted()  # one dropped while the cluster started
            plan.finished.update(run_slides(request, plan, client, watch, door))
    results = settled_results(request, plan, door.log)
    return results, finish_morning_report(plan.morning, results, door.log)


def plan_batch(request: BatchRequest, door: BatchDoor) -> BatchPlan:
    """Read the input, decide where chunks run, and settle every slide no thread runs."""
    items = parse_batch_input(request.input, request.out)
    check_regions(items, request.params)
    refuse_unusable_root(request.out)
    door.log.info("%d slide(s) from %s -> %s", len(items), request.input, request.out)
    address = request.dask_address or (
        "a scheduler started for the batch" if request.scheduler else None
    )
    in_process = engine_in_process(probe_machine(), request.params, request.workers, address).value
    at_once = min(request.concurrency, max(1, len(items))) if in_process else 1
    model = model_files(request.params)
    finished = slides_without_thread(items, request, model, door)
    names, slides = [item.name for item in items], [item.slide for item in items]
    morning = BatchReport(request.out, names, slides, finished)
    return BatchPlan(items, model, finished, in_process, at_once, morning)


def slides_without_thread(
    items: list[BatchItem], request: BatchRequest, model: ModelFiles | None, door: BatchDoor
) -> dict[int, SlideResult]:
    """The results, by index, of the slides no thread runs: the finished ones (their
    warnings logged again: no tissue still stands) and, unless `retry_failed`, the known
    failures."""
    finished = finished_slides(items, request.out, request.params, model)
    if finished:
        door.log.info("%d slide(s) already up to date: skipped", len(finished))
    for result in finished.values():
        door.log_slide_warnings(result)
    if not request.retry_failed:
        finished.update(known_failures(items, request.out, request.params, model, skip=finished))
    return finished


def finished_slides(
    items: list[BatchItem], out: str, params: SegmentParams, model: ModelFiles | None
) -> dict[int, SlideResult]:
    """The "up-to-date" results of the items whose finished outputs are this run, by index
    (a rerun over a finished folder costs a check per slide; the model files are hashed
    once). An item the check cannot settle (a bad name, a link in the way) is left to its
    thread, which reports it."""
    done: dict[int, SlideResult] = {}
    if model is None:  # no model to compare with: every slide runs and reports why
        return done
    for i, item in enumerate(items):
        try:
            result = up_to_date_result(item.slide, out, params_for(item, params), model)
        except WsiSegmentError:
            continue
        if result is not None:
            done[i] = result
    return done


def run_slides(
    request: BatchRequest,
    plan: BatchPlan,
    client: Client | None,
    watch: SlideWatch,
    door: BatchDoor,
) -> dict[int, SlideResult]:
    """Run each slide still to do, `concurrency` at a time, each in a daemon thread
    (`flows.daemon_threads`) with a copy of this thread's context (a flow run's, where the
    door's slide is a task of it: a copy each, as one context cannot be entered by two threads
    at once), and wait for their results (an interrupt stops them: `wait_for_slides`); each
    ended slide goes into the morning report as it ends, so cohort.csv is true for what
    finished so far."""
    todo = plan.todo
    progress = SlideProgress(len(todo))
    with daemon_pool(request.concurrency) as pool:
        futures: dict[int, Future[SlideResult]] = {}
        for i in todo:
            job = SlideJob(
                plan.items[i], i, request.out, request.params, client, watch, plan.at_once
            )
            futures[i] = pool.submit(contextvars.copy_context().run, door.run_slide, job)
            futures[i].add_done_callback(functools.partial(report_slide, plan.morning, i))
            futures[i].add_done_callback(progress.ended)
        return wait_for_slides(futures, plan.items, watch, plan.finished)


class SlideProgress:
    """A line per ended slide, `[3/22] name: done in 41.2 s`, at INFO on `BATCH_LOGGER`: the
    terminal shows it; a flow run shows each slide's task instead. Called in the slide's
    thread as it ends."""

    def __init__(self, total: int) -> None:
        self.total, self.count = total, 0
        self._lock = threading.Lock()

    def ended(self, future: Future[SlideResult]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        with self._lock:
            self.count += 1
            count = self.count
        logging.getLogger(BATCH_LOGGER).info(
            "[%d/%d] %s: %s in %.1f s",
            count, self.total, shown_slide_path(result.slide), result.status, result.seconds,
        )  # fmt: skip


def report_slide(morning: BatchReport, index: int, future: Future[SlideResult]) -> None:
    """After slide `index` ends: rebuild cohort.csv and report.html. A problem there never
    fails the slides, and the batch's end rebuilds again and warns of it once
    (`finish_morning_report`), so here it is DEBUG: not the same warning after each slide."""
    try:
        morning.add(index, future.result())
    except Exception as exc:  # whatever ended the slide is the batch's to report, not ours
        logging.getLogger(__name__).debug("report not updated: %s", exc)


def run_slide_job(job: SlideJob, run_slide: RunSlide, words: Callable[[str], str]) -> SlideResult:
    """One slide's run in its thread; any error becomes a "failed" result so the batch goes
    on. The batch's watch may stop it through the token it hands the stages: its time
    limit, or an interrupt."""
    t0 = time.perf_counter()
    error: Exception
    try:
        with job.watch.running(job.index) as cancel, group_signal_as_stop(cancel):
            params = params_for(job.item, job.params)
            return run_slide(job.item.slide, job.out, params, job.client, job.at_once, cancel)
    except SlideStopped as exc:
        stopped = stopped_result(job.item, exc, job.watch.timeout_s, time.perf_counter() - t0)
        if stopped.status == "failed":
            stopped.error = words(stopped.error or "")
        return stopped
    except WsiSegmentError as exc:
        message, error = words(str(exc)), exc
    except Exception as exc:  # a bug on one slide must not stop the night's batch
        logging.getLogger(__name__).exception(
            "unexpected error on %s", shown_slide_path(job.item.slide)
        )
        message, error = f"internal error ({type(exc).__name__}): {exc}", exc
    seconds = time.perf_counter() - t0
    return SlideResult(
        job.item.slide, "failed", None, {}, message, seconds, error_class=error_class_of(error)
    )


def settled_results(request: BatchRequest, plan: BatchPlan, log: Log) -> list[SlideResult]:
    """Every slide's result in input order, failures recorded for the next run
    (`pipeline.known_failures`); a failure that could not be recorded is a WARNING line."""
    ordered = [plan.finished[i] for i in range(len(plan.items))]
    results, unrecorded = settle_records(
        plan.items, ordered, request.out, request.params, plan.model
    )
    for problem in unrecorded:
        log.warning("failure not recorded: %s", problem)
    return results


def finish_morning_report(
    morning: BatchReport, results: list[SlideResult], log: Log
) -> MorningReport | None:
    """The last rebuild of cohort.csv and report.html, with every slide's result."""
    try:
        return morning.finish(results)
    except WsiSegmentError as exc:
        log.warning("report not written: %s", exc)
        return None


def dask_context(
    dask_address: str | None, workers: int | None, in_process: bool
) -> contextlib.AbstractContextManager[Client | None]:
    """Scheduler at `dask_address`; else a local cluster, unless chunks run `in_process`."""
    if in_process:
        return contextlib.nullcontext(None)
    from wsi_segment.flows.dask_cluster import dask_client

    if dask_address:
        return dask_client(dask_address, workers)
    return _out_of_group_signals(dask_client(dask_address, workers))


@contextlib.contextmanager
def _out_of_group_signals(
    cluster: contextlib.AbstractContextManager[Client | None],
) -> Iterator[Client | None]:
    """Enter `cluster` (a local cluster) with Ctrl-C, SIGTERM and SIGHUP blocked in this
    thread, so the threads it starts, and the worker processes and resource tracker those
    spawn, inherit the block: a signal to the batch's process group (a terminal's Ctrl-C,
    `timeout`, a scheduler) reaches the batch alone, which stops its slides and closes the
    cluster, instead of killing the workers mid-chunk with tracebacks of their own. The
    nanny stops its worker through a queue, and kills it if it must."""
    start_resource_tracker()  # else starting it would unblock SIGINT and SIGTERM here
    with contextlib.ExitStack() as stack:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, *TERMINATING_SIGNALS))
        try:
            client = stack.enter_context(cluster)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        yield client
