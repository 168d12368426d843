"""The Prefect door onto the batch loop: the `segment-batch` flow, each slide a task.

The loop itself (plan the slides, run each, record, write the morning report) is
`flows.batch_loop`'s, the same the terminal runs without Prefect. This door hands it the
flow run's logger, advice in the words of a deployment's parameters (`flows.door_words`),
and a slide run as a `slide` task of the flow run (its stages as retried tasks:
`flows.slide_flow`), which the loop's daemon threads call; then it publishes the batch's
artifacts and fails (`BatchFailedError`) if any slide failed anew, so schedulers and the CLI
see it; known failures alone leave it Completed, with a WARNING line each.
"""

from __future__ import annotations

from typing import Any

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.exceptions import TerminationSignal  # noqa: E402
from prefect.states import Failed, State  # noqa: E402

from wsi_segment.errors import WsiSegmentError  # noqa: E402
from wsi_segment.flows.batch_console import REPORT_LINE  # noqa: E402
from wsi_segment.flows.batch_interrupt import BatchStop  # noqa: E402
from wsi_segment.flows.batch_loop import BatchDoor, BatchRequest, SlideJob, run_batch, run_slide_job  # noqa: E402
from wsi_segment.flows.door_words import run_words  # noqa: E402
from wsi_segment.flows.flow_process import prepare_flow_process  # noqa: E402
from wsi_segment.flows.morning_artifacts import publish_morning_report  # noqa: E402
from wsi_segment.flows.run_log import (  # noqa: E402
    log_slide_warnings,
    pipeline_warnings_to_run_log,
)
from wsi_segment.flows.run_origin import flow_run_origin  # noqa: E402
from wsi_segment.flows.slide_flow import make_params, run_slide_stages  # noqa: E402
from wsi_segment.pipeline.batch_report import (  # noqa: E402
    batch_rows,
    counts,
    failure_message,
    known_failure_message,
    markdown_table,
)
from wsi_segment.pipeline.morning_report import MorningReport  # noqa: E402
from wsi_segment.pipeline.segment import SlideResult  # noqa: E402

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


class BatchTerminated(BatchStop, TerminationSignal):
    """SIGTERM during a flow's batch: Prefect's `TerminationSignal`, so a deployment's
    cancellation is handled as Prefect handles it; `results` as for
    `flows.batch_interrupt.BatchInterrupted`. Here, not there: only a flow's stop is one."""

    def __init__(self, signum: int, results: list[SlideResult]) -> None:
        super().__init__(signum)
        self.results = results


@task(
    name="slide", task_run_name="slide-{job.item.name}", cache_policy=NO_CACHE, persist_result=False
)
def slide_task(job: SlideJob) -> SlideOrFailed:
    """One slide's stages as tasks (`flows.batch_loop.run_slide_job`); a failed slide's result
    handed back in a Failed state, so the slide's task shows what its stage task shows."""
    result = run_slide_job(job, run_slide_stages, run_words)
    if result.status != "failed":
        return result
    return Failed(message=failure_message(result), data=result)


def run_slide_task(job: SlideJob) -> SlideResult:
    """The `slide` task run in this thread, in the flow run's context, to its end; its
    `SlideResult`, whether the task's state is Completed or Failed. One that crashed or was
    cancelled raises what ended it."""
    state = slide_task(job, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, SlideResult):  # the task never returned
        state.result()  # raises what ended it
        raise TypeError(f"slide task ended without a result: {result!r}")
    return result


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

    `workers`: Dask worker processes of a local cluster (default: one per GPU on a machine
    with several, else none; 0 runs chunks through the engine in this process); ignored
    with `dask_address`. `concurrency`: slides
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
    params = make_params(model_dir, options, origin=flow_run_origin())
    request = BatchRequest(
        input, out, params, dask_address, workers, concurrency, retry_failed, slide_timeout
    )
    door = BatchDoor(
        log=get_run_logger(),
        run_slide=run_slide_task,
        warnings_to_log=pipeline_warnings_to_run_log,
        log_slide_warnings=log_slide_warnings,
    )
    results, report = run_batch(request, door)
    tally = publish_batch_report(input, out, results, report)
    report_outcome(results, tally)
    return results


def publish_batch_report(
    input: str, out: str, results: list[SlideResult], report: MorningReport | None
) -> dict[str, int]:
    """The batch's table and markdown artifacts and its morning report; returns the tally
    of slides by status."""
    tally = counts(results)
    rows = batch_rows(results)
    create_table_artifact(rows, key="segment-batch", description=f"{input} -> {out}: {tally}")
    publish_morning_report(report)
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
