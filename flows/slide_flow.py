"""Prefect flow for one slide: the pipeline's three stages as tasks, with retries.

The stages are `pipeline.segment.prepare_stage` (open + tissue + plan, reading started
early as the CLI's run does), `infer` (the engine, or bands of it on a Dask cluster, into
the zarr store) and `finish` (polygons + outputs, then the atomic publish). Splitting
them lets Prefect retry just the stage that hit a transient I/O error (a network share
hiccup, a stale NFS handle) and shows where a slide spends its time. Deterministic errors
(a broken slide, a bad model) are not retried: they fail the same way every time. Which
errors are transient is `wsi.retries.is_transient`, the rule slide reads retry by; the order of
the stages, the up-to-date check, the error mapping and closing the slide are
`pipeline.segment.run_stages`, shared with the CLI.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect import Task, flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from wsi_segment.errors import (  # noqa: E402
    ConfigError,
    WsiSegmentError,
)
from wsi_segment.flows.dask_cluster import dask_client  # noqa: E402
from wsi_segment.flows.door_words import run_words  # noqa: E402
from wsi_segment.flows.dropped_stops import stop_on_dropped  # noqa: E402
from wsi_segment.flows.flow_process import prepare_flow_process  # noqa: E402
from wsi_segment.flows.run_log import log_slide_warnings, pipeline_warnings_to_run_log  # noqa: E402
from wsi_segment.flows.run_origin import flow_run_origin  # noqa: E402
from wsi_segment.pipeline import segment  # noqa: E402
from wsi_segment.pipeline.batch_report import class_rows, markdown_table  # noqa: E402
from wsi_segment.pipeline.cancellation import (  # noqa: E402
    NEVER_CANCELLED,
    CancelToken,
)
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome  # noqa: E402
from wsi_segment.pipeline.outputs.output_dir import OutputDir  # noqa: E402
from wsi_segment.pipeline.params import SegmentParams  # noqa: E402
from wsi_segment.pipeline.prepare import PreparedSlide  # noqa: E402
from wsi_segment.pipeline.segment import SlideResult  # noqa: E402
from wsi_segment.pipeline.stage_retries import STAGE_RETRIES, STAGE_RETRY_DELAYS_S  # noqa: E402
from wsi_segment.wsi.retries import is_transient  # noqa: E402
from wsi_segment.wsi.shown_path import shown_text  # noqa: E402

if TYPE_CHECKING:
    from distributed import Client
    from prefect.client.schemas import TaskRun
    from prefect.states import State

P = ParamSpec("P")
R = TypeVar("R")


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect `retry_condition_fn`: retry only transient I/O errors."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return is_transient(data)
    try:
        state.result()
    except BaseException as exc:
        return is_transient(exc)
    return False


def stage_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """`@task` for a pipeline stage (the slide's and the training flow's): retried on
    transient I/O errors only. Stage results (open slides, tissue masks, chunk outcomes)
    stay in memory: never hashed for caching and never persisted. In a deployment's run an
    error's advice names the flow's parameters (`in_run_words`): the task's state shows it."""

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        @functools.wraps(fn)
        def worded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except WsiSegmentError as exc:
                reworded = in_run_words(exc)
                if reworded is exc:
                    raise
                raise reworded from exc

        return task(
            name=name,
            retries=STAGE_RETRIES,
            retry_delay_seconds=list(STAGE_RETRY_DELAYS_S),
            retry_condition_fn=retry_if_transient,
            cache_policy=NO_CACHE,
            persist_result=False,
        )(worded)

    return decorate


@stage_task("open-and-tissue")
def open_and_tissue(
    slide_path: str,
    out_root: str | Path,
    params: SegmentParams,
    client: Client | None = None,
    at_once: int = 1,
    cancel: CancelToken = NEVER_CANCELLED,
) -> PreparedSlide:
    """Stage 1: open the slide and model, detect tissue, plan the chunks; a local run starts
    reading as the CLI's does (`pipeline.segment.prepare_stage`; `client`: the Dask cluster
    the bands run on, whose workers' machine the plan is for; `at_once`: the slides in
    flight in this process, which share its decoders; `cancel`: the batch's stop)."""
    return segment.prepare_stage(slide_path, out_root, params, client, at_once, cancel)


@stage_task("inference")
def inference(
    prep: PreparedSlide,
    work_dir: Path,
    client: Client | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[ChunkOutcome]:
    """Stage 2: every tissue chunk through the model, on the Dask cluster if there is one."""
    return segment.infer(prep, work_dir, client=client, cancel=cancel)


@stage_task("polygons-and-outputs")
def polygons_and_outputs(
    prep: PreparedSlide,
    outcomes: list[ChunkOutcome],
    out: OutputDir,
    cancel: CancelToken = NEVER_CANCELLED,
) -> SlideResult:
    """Stage 3: polygons, GeoJSON, overlay, summary; then publish the folder at once."""
    return segment.finish(prep, outcomes, out, cancel)


def run_slide_stages(
    slide_path: str,
    out_root: str,
    params: SegmentParams,
    client: Client | None = None,
    at_once: int = 1,
    cancel: CancelToken = NEVER_CANCELLED,
) -> SlideResult:
    """`pipeline.segment.run_stages` with the stage tasks above, then the slide's artifacts.
    `client`: the Dask cluster the chunks run on (None: this process, where `at_once`
    slides are in flight); `cancel`: a batch's stop of this slide (`flows.slide_watch`),
    checked by every stage.

    Returns a `pipeline.segment.SlideResult`; raises what the stage sequence raised (a
    `SlideStopped` once `cancel` is cancelled).
    """
    stages = segment.Stages(
        prepare=lambda path, root, p: open_and_tissue(path, root, p, client, at_once, cancel),
        infer=lambda prep, work_dir: inference(prep, work_dir, client, cancel),
        finish=lambda prep, outcomes, out: polygons_and_outputs(prep, outcomes, out, cancel),
    )
    result = segment.run_stages(slide_path, out_root, params, stages, cancel)
    publish_or_warn(result)
    log_slide_warnings(result)
    return result


def publish_or_warn(result: SlideResult) -> None:
    """The slide's artifacts (`publish_slide_artifacts`); where Prefect's server does not take
    them (down for longer than its client retries), a warning: the slide's outputs are
    published already, so it is done, never failed for its artifacts."""
    try:
        publish_slide_artifacts(result)
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "%s: outputs written, but Prefect did not take the slide's artifacts (%s: %s)",
            result.slide, type(exc).__name__, exc,
        )  # fmt: skip


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return f"slide-{key or 'unnamed'}"[:100]


def publish_slide_artifacts(result: SlideResult) -> None:
    """Per-class area table and the output folder, attached to the current flow/task run."""
    if result.out_dir is None:
        return
    out_dir = Path(result.out_dir).resolve()
    rows = class_rows(result.summary or {})
    key = artifact_key(out_dir.name)
    create_table_artifact(
        rows,
        key=key,
        description=f"Per-class areas of {result.slide} ({result.status}); outputs in {out_dir}",
    )
    create_markdown_artifact(
        f"### {out_dir.name}: {result.status}\n\n"
        f"Outputs: [{out_dir}]({out_dir.as_uri()})\n\n{markdown_table(rows)}\n",
        key=f"{key}-outputs"[:100],
        description=f"Outputs of {result.slide}",
    )


def make_params(
    model_dir: str | None = None,
    options: dict[str, Any] | None = None,
    **fields: Any,
) -> SegmentParams:
    """SegmentParams from flow parameters (JSON-friendly: deployments store them as JSON)."""
    values = dict(options or {})
    values.update({k: v for k, v in fields.items() if v is not None})
    if model_dir:
        values["model_dir"] = Path(model_dir)
    try:
        return SegmentParams.from_dict(values)
    except TypeError as exc:
        raise ConfigError(f"unknown segmentation option in {sorted(values)}: {exc}") from exc


@flow(name="segment-slide")
def segment_slide_flow(
    slide: str,
    out: str,
    model_dir: str | None = None,
    mpp: float | None = None,
    output_name: str | None = None,
    dask_address: str | None = None,
    options: dict[str, Any] | None = None,
) -> SlideResult:
    """Segment one slide into `<out>/<name>/`; the flow fails if the slide fails.

    `options` holds any other `SegmentParams` field (overlap, device, overwrite, ...).
    Chunks run on the Dask scheduler at `dask_address` if given, else in local threads.
    A deployment's run finishes even if its worker dies (`flows.worker_pipes`); a stop
    Python drops while the slide runs stops it all the same (`flows.dropped_stops`).
    """
    prepare_flow_process()  # worker pipes, open files, address space
    try:
        # a stop whose exception Python drops (a signal landing in a finaliser) cancels the
        # run, which raises it again at its next check: the run does not go on to its end
        with stop_on_dropped() as stop:
            params = make_params(
                model_dir, options, mpp=mpp, output_name=output_name, origin=flow_run_origin()
            )
            with pipeline_warnings_to_run_log():
                if dask_address:
                    with dask_client(dask_address) as client:
                        return run_slide_stages(slide, out, params, client, cancel=stop)
                return run_slide_stages(slide, out, params, cancel=stop)
    except WsiSegmentError as exc:
        reworded = in_run_words(exc)
        if reworded is exc:
            raise
        raise reworded from exc


def in_run_words(exc: WsiSegmentError) -> WsiSegmentError:
    """`exc`, or a copy whose message names the flow's parameters in a deployment's run
    (`flows.door_words`) and each URL as shown (`wsi.shown_path`: a presigned URL's
    signature is not in the task's state): the state's message is what the lab reads."""
    message = run_words(shown_text(str(exc)))
    if message == str(exc):
        return exc
    reworded = copy.copy(exc)
    reworded.args = (message,)
    return reworded
