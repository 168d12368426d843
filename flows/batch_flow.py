"""Prefect flow for a batch: many slides, a few at a time, each failing on its own.

Slides run concurrently up to `concurrency` (threads of this process, each driving one
slide's stage tasks); their chunks all go to one Dask cluster, or, on a machine with one
GPU (or `workers=0`), run in this process: on a GPU through the engine, where the
slides in flight share the machine's decoder processes (the run policy's `decoders`, for
`RunFacts.at_once` slides: `pipeline.run_policy`)
and their compute stages take turns on the one model (one forward pass at a time), so the next
slide's tissue detection, planning and first decodes overlap this slide's inference and
its outputs the next one's. A slide that fails is
recorded with its error and the others go on (its slide task ends Failed, as its stage task
does); finished slides are skipped (the pipeline's up-to-date check, made for every slide
before any task starts), so rerunning after a crash resumes. A slide that failed before and
has not changed since (same slide, model and parameters) is not retried unless asked
(`pipeline.known_failures`). The flow ends with a table artifact and fails
(`BatchFailedError`) if any slide failed anew, so schedulers and the CLI see it; known
failures alone leave it Completed, with a WARNING line each.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed, State  # noqa: E402

from wsi_segment.errors import (  # noqa: E402
    TERMINATING_SIGNALS,
    ConfigError,
    SlideStopped,
    WsiSegmentError,
)
from wsi_segment.flows.batch_console import REPORT_LINE  # noqa: E402
from wsi_segment.flows.batch_interrupt import (  # noqa: E402
    group_signal_as_stop,
    stopped_result,
    wait_for_slides,
)
from wsi_segment.flows.dask_cluster import dask_client  # noqa: E402
from wsi_segment.flows.door_words import run_words  # noqa: E402
from wsi_segment.flows.dropped_stops import DroppedStops  # noqa: E402
from wsi_segment.flows.flow_process import prepare_flow_process  # noqa: E402
from wsi_segment.flows.morning_artifacts import publish_morning_report, report_slide  # noqa: E402
from wsi_segment.flows.run_log import (  # noqa: E402
    log_slide_warnings,
    pipeline_warnings_to_run_log,
)
from wsi_segment.flows.run_origin import flow_run_origin  # noqa: E402
from wsi_segment.flows.slide_flow import make_params, run_slide_stages  # noqa: E402
from wsi_segment.flows.slide_runner import SlideTaskRunner  # noqa: E402
from wsi_segment.flows.slide_watch import SlideWatch  # noqa: E402
from wsi_segment.pipeline.batch_inputs import BatchItem, params_for, parse_batch_input  # noqa: E402
from wsi_segment.pipeline.batch_report import (  # noqa: E402
    batch_rows,
    counts,
    failure_message,
    known_failure_message,
    markdown_table,
)
from wsi_segment.pipeline.inference.decode_pool import start_resource_tracker  # noqa: E402
from wsi_segment.pipeline.known_failures import (  # noqa: E402
    error_class_of,
    known_failures,
    settle_records,
)
from wsi_segment.pipeline.machine import probe_machine  # noqa: E402
from wsi_segment.pipeline.morning_report import BatchReport  # noqa: E402
from wsi_segment.pipeline.outputs.shared_access import refuse_unusable_root  # noqa: E402
from wsi_segment.pipeline.params import SegmentParams  # noqa: E402
from wsi_segment.pipeline.run_policy import engine_in_process  # noqa: E402
from wsi_segment.pipeline.segment import SlideResult, up_to_date_result  # noqa: E402
from wsi_segment.pipeline.up_to_date import ModelFiles, model_files  # noqa: E402
from wsi_segment.wsi.shown_path import shown_slide_path  # noqa: E402

if TYPE_CHECKING:
    from distributed import Client

SlideOrFailed = SlideResult | State[SlideResult]  # what a slide task returns


class BatchFailedError(WsiSegmentError):
    """Some slides of a batch failed; `results` holds every slide's result. Defined here,
    not in `wsi_segment.errors`, because of them: a `SlideResult` is a pipeline type, which
    that module (imported by every layer, importing none) cannot name."""

    def __init__(self, message: str, results: list[SlideResult]) -> None:
        super().__init__(message)
        self.results = results

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, should Prefect persist the state
        return (type(self), (str(self), self.results))


@task(name="slide", task_run_name="slide-{item.name}", cache_policy=NO_CACHE, persist_result=False)
def slide_task(
    item: BatchItem,
    out: str,
    params: SegmentParams,
    client: Client | None,
    index: int = 0,
    watch: SlideWatch | None = None,
    at_once: int = 1,
) -> SlideOrFailed:
    """One slide's stages; any error becomes a "failed" result so the batch goes on, handed
    back in a Failed state, so the slide's task shows what its stage task shows. `watch`
    (the batch's) may stop the slide through the cancellation token it hands the stages:
    its time limit, or an interrupt. `at_once`: slides in
    flight in this process (their run policies share its decoders out)."""
    t0 = time.perf_counter()
    watch = watch or SlideWatch(None)
    error: Exception
    try:
        with watch.running(index) as cancel, group_signal_as_stop(cancel):
            slide_params = params_for(item, params)
            return run_slide_stages(item.slide, out, slide_params, client, at_once, cancel)
    except SlideStopped as exc:
        stopped = stopped_result(item, exc, watch.timeout_s, time.perf_counter() - t0)
        if stopped.status != "failed":
            return stopped
        stopped.error = run_words(stopped.error or "")
        return Failed(message=failure_message(stopped), data=stopped)
    except WsiSegmentError as exc:
        message, error = run_words(str(exc)), exc
    except Exception as exc:  # a bug on one slide must not stop the night's batch
        get_run_logger().exception("unexpected error on %s", shown_slide_path(item.slide))
        message, error = f"internal error ({type(exc).__name__}): {exc}", exc
    seconds = time.perf_counter() - t0
    result = SlideResult(
        item.slide, "failed", None, {}, message, seconds, error_class=error_class_of(error)
    )
    return Failed(message=failure_message(result), data=result)


def finished_slides(
    items: list[BatchItem], out: str, params: SegmentParams, model: ModelFiles | None
) -> dict[int, SlideResult]:
    """The "up-to-date" results of the items whose finished outputs are this run, by index,
    decided before any task starts (a rerun over a finished folder then costs a check per
    slide, not a Prefect task and its artifacts; the model files are hashed once). An item
    the check cannot settle (a bad name, a link in the way) is left to its task, which
    reports it. `model`: `model_files(params)`."""
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


def _dask_context(
    dask_address: str | None, workers: int | None, in_process: bool
) -> contextlib.AbstractContextManager[Client | None]:
    """Scheduler at `dask_address`; else a local cluster, unless chunks run `in_process`."""
    if in_process:
        return contextlib.nullcontext(None)
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


@flow(name="segment-batch")
def segment_batch(
    input: str,
    out: str,
    model_dir: str | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
    concurrency: int = 2,
    options: dict[str, Any] | None = None,
    retry_failed: bool = False,
    slide_timeout: float | None = None,
) -> list[SlideResult]:
    """Segment every slide of a folder, glob or manifest CSV into `<out>/<name>/`.

    `workers`: Dask worker processes of a local cluster (default: one per GPU, but none on a
    machine with one GPU, else one CPU worker; 0 runs chunks through the engine in this
    process); ignored with `dask_address`. `concurrency`: slides
    in flight; 2 overlaps one slide's fixed costs (open, tissue, plan; polygons and outputs)
    with the other's inference, and more only splits the same device and cores further.
    `options`: other `SegmentParams` fields (overlap, device, overwrite, ...).
    `retry_failed`: also run the slides that failed before and have not changed since
    (known failures, otherwise reported without being retried).
    `slide_timeout`: seconds a slide may run before it is stopped and marked failed (none:
    no limit). On Ctrl-C / SIGTERM the slides in flight are stopped and cleaned up, and the
    interrupt is raised with every slide's result (`flows.batch_interrupt`). A deployment's
    run finishes even if its worker dies (`flows.worker_pipes`).
    """
    prepare_flow_process()  # worker pipes, open files, address space
    check_batch_limits(concurrency, slide_timeout)
    with contextlib.ExitStack() as stack:
        # a stop whose exception Python drops before the slides start (reading the input, the
        # up-to-date scan, the cluster's start) stops the batch before any starts
        dropped = stack.enter_context(DroppedStops())
        logger = get_run_logger()
        items = parse_batch_input(input, out)
        refuse_unusable_root(out)
        params = make_params(model_dir, options, origin=flow_run_origin())
        logger.info("%d slide(s) from %s -> %s", len(items), input, out)
        in_process = engine_in_process(probe_machine(), params, workers, dask_address).value
        # the slides in flight in this process share its decoders (each slide's run policy)
        at_once = min(concurrency, max(1, len(items))) if in_process else 1
        model = model_files(params)
        finished = slides_without_task(items, out, params, model, retry_failed)
        todo = [i for i in range(len(items)) if i not in finished]
        morning = BatchReport(out, [item.name for item in items], finished)
        stack.enter_context(pipeline_warnings_to_run_log())
        dropped.raise_noted()  # before a cluster starts, or a batch all up to date ends
        if todo:  # no cluster starts for a batch that is all finished
            client = stack.enter_context(_dask_context(dask_address, workers, in_process))
            watch = stack.enter_context(SlideWatch(slide_timeout))  # notes drops from here on
            dropped.raise_noted()  # one dropped while the cluster started
            finished.update(
                run_slide_tasks(
                    items, todo, out, params, client, watch, concurrency, at_once, morning, finished
                )
            )
    results = settled_results(items, finished, out, params, model)
    tally = publish_batch_report(input, out, results, morning)
    report_outcome(results, tally)
    return results


def check_batch_limits(concurrency: int, slide_timeout: float | None) -> None:
    """Refuse limits no batch can run under (`ConfigError`), before any slide is read."""
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1 (got {concurrency})")
    if slide_timeout is not None and not slide_timeout > 0:
        raise ConfigError(f"slide_timeout must be > 0 seconds (got {slide_timeout})")


def slides_without_task(
    items: list[BatchItem],
    out: str,
    params: SegmentParams,
    model: ModelFiles | None,
    retry_failed: bool,
) -> dict[int, SlideResult]:
    """The results, by index, of the slides no task runs: the finished ones (their warnings
    logged again: no tissue still stands) and, unless `retry_failed`, the known failures."""
    finished = finished_slides(items, out, params, model)
    if finished:
        get_run_logger().info("%d slide(s) already up to date: skipped", len(finished))
    for result in finished.values():
        log_slide_warnings(result)
    if not retry_failed:
        finished.update(known_failures(items, out, params, model, skip=finished))
    return finished


def run_slide_tasks(
    items: list[BatchItem],
    todo: list[int],
    out: str,
    params: SegmentParams,
    client: Client | None,
    watch: SlideWatch,
    concurrency: int,
    at_once: int,
    morning: BatchReport,
    finished: dict[int, SlideResult],
) -> dict[int, SlideResult]:
    """Run a slide task for each index of `todo`, `concurrency` at a time, and wait for their
    results (an interrupt stops them: `wait_for_slides`); each finished slide goes into the
    morning report as it ends, so cohort.csv is true for what finished so far."""
    # daemon slide threads: one stuck past the interrupt's grace does not hold the exit
    pool: SlideTaskRunner[SlideOrFailed] = SlideTaskRunner(max_workers=concurrency)
    with pool as runner:
        common = {"out": out, "params": params, "client": client, "watch": watch}
        common["at_once"] = at_once
        futures = {
            i: runner.submit(slide_task, {"item": items[i], "index": i, **common}) for i in todo
        }
        for i, future in futures.items():
            future.add_done_callback(functools.partial(report_slide, morning, i))
        return wait_for_slides(futures, items, watch, finished)


def settled_results(
    items: list[BatchItem],
    finished: dict[int, SlideResult],
    out: str,
    params: SegmentParams,
    model: ModelFiles | None,
) -> list[SlideResult]:
    """Every slide's result in input order, failures recorded for the next run
    (`pipeline.known_failures`); a failure that could not be recorded is a WARNING line."""
    results, unrecorded = settle_records(
        items, [finished[i] for i in range(len(items))], out, params, model
    )
    for problem in unrecorded:
        get_run_logger().warning("failure not recorded: %s", problem)
    return results


def publish_batch_report(
    input: str, out: str, results: list[SlideResult], morning: BatchReport
) -> dict[str, int]:
    """The batch's table and markdown artifacts and its morning report; returns the tally
    of slides by status."""
    tally = counts(results)
    rows = batch_rows(results)
    create_table_artifact(rows, key="segment-batch", description=f"{input} -> {out}: {tally}")
    publish_morning_report(morning, results)
    create_markdown_artifact(
        f"### Batch {input} -> {out}\n\n{tally}\n\n{markdown_table(rows)}\n",
        key="segment-batch-report",
        description="Batch results",
    )
    return tally


def report_outcome(results: list[SlideResult], tally: dict[str, int]) -> None:
    """A WARNING line per known failure, an ERROR line per slide failed anew, the tally;
    then `BatchFailedError` if any slide failed anew, so schedulers and the CLI see it."""
    logger = get_run_logger()
    for r in results:
        if r.status == "known-failure":
            logger.warning("%s", run_words(known_failure_message(r)), extra=REPORT_LINE)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        logger.error("failed: %s", failure_message(r))
    logger.info("batch done: %s", tally)
    if failed:
        raise BatchFailedError(f"{len(failed)} of {len(results)} slide(s) failed", results)
