"""Segment one slide: the main job behind `wsi-segment SLIDE` and the Prefect flows.

Three stages, run in order by `run_stages` (the one sequence: `segment_slide` passes the
functions, the Prefect slide flow the same functions wrapped as tasks), unless the slide's
outputs are already up to date (`pipeline.up_to_date`, decided before any of them runs):

1. `prepare_stage` (pipeline/prepare.py) open the slide, check mpp, decide the run policy
              (`pipeline.run_policy`), load the model, detect tissue, plan chunks; a local
              run starts reading while the model loads;
2. `infer` (pipeline/infer_stage.py) run every tissue chunk, streaming probabilities into
              the zarr store inside a temporary folder: through the engine
              (`pipeline.inference.engine`: a read source, the model's compute threads, the
              writer) as the policy says, in this process or in bands on a Dask cluster's
              workers, each band deciding its own policy there
              (`pipeline.inference.band_runner`);
3. `finish`   polygons, GeoJSON, overlay, summary, pyramid; then rename the temporary folder
              to its final name so a slide's outputs appear all at once.

Nothing here starts Prefect; `client` lets the caller pass a `distributed.Client`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.address_space import memory_named
from wsi_segment.open_files import exhaustion_named
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken

# the stages are reached through this module (the Prefect flows call segment.prepare_stage and
# segment.infer): prepare and infer are defined in prepare.py and infer_stage.py
from wsi_segment.pipeline.infer_stage import infer as infer
from wsi_segment.pipeline.inference.band_runner import cluster_machine
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.outputs.output_dir import (
    OutputDir,
    output_error,
    read_previous_summary,
)
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import PreparedSlide
from wsi_segment.pipeline.prepare import prepare as prepare
from wsi_segment.pipeline.progress import NO_PROGRESS, Progress
from wsi_segment.pipeline.up_to_date import ModelFiles, finished_output, is_up_to_date
from wsi_segment.wsi.shown_path import shown_slide_path, shown_text

if TYPE_CHECKING:  # distributed is imported only when a cluster is used
    from distributed import Client


@dataclass
class SlideResult:
    """What one slide run ended with (the batch table is made of these). It is reported
    (terminal lines, the batch table, cohort.csv, Prefect's artifacts and logs), so its
    slide and error are as shown (`wsi.shown_path`: a URL without its query)."""

    slide: str
    # "done" | "up-to-date" | "failed" | "known-failure" (pipeline.known_failures);
    # a batch adds "interrupted" and "not started"
    status: str
    out_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    error_class: str | None = None  # a failure's `wsi_segment.errors` class name
    known_since: str | None = None  # a failure on record since then (UTC), not a new one

    def __post_init__(self) -> None:
        self.slide = shown_slide_path(str(self.slide))
        if self.error is not None:
            self.error = shown_text(self.error)


def finish(
    prep: PreparedSlide,
    outcomes: list[ChunkOutcome],
    out: OutputDir,
    cancel: CancelToken = NEVER_CANCELLED,
) -> SlideResult:
    """Stage 3: vector outputs, overlay, summary and pyramid; then publish the folder,
    unless `cancel` was cancelled meanwhile (its reason is raised: the folder is removed)."""
    from wsi_segment.pipeline.outputs.finish_outputs import write_outputs

    cancel.check()
    summary = write_outputs(prep, outcomes, out.work_dir)
    cancel.check()
    out.commit()
    return SlideResult(prep.slide_path, "done", prep.out_dir, summary)


@dataclass(frozen=True)
class Stages:
    """The three stages `run_stages` calls in order. `segment_slide` passes the functions
    above; the Prefect flow passes the same functions wrapped as tasks (with retries)."""

    prepare: Callable[[str, str | Path, SegmentParams], PreparedSlide]
    infer: Callable[[PreparedSlide, Path], list[ChunkOutcome]]
    finish: Callable[[PreparedSlide, list[ChunkOutcome], OutputDir], SlideResult]


def up_to_date_result(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    model: ModelFiles | None = None,
) -> SlideResult | None:
    """The "up-to-date" result of a slide whose finished output is this run, decided before
    anything loads (`pipeline.up_to_date.finished_output`; `model`: the model files' identity
    when hashed once for many slides); None when it must run. A batch asks first, so
    finished slides cost it no task either."""
    t0 = time.perf_counter()
    finished = finished_output(str(slide_path), out_root, params, model)
    if finished is None:
        return None
    out_dir, summary = finished
    return SlideResult(
        str(slide_path), "up-to-date", out_dir, summary, None, time.perf_counter() - t0
    )


def run_stages(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    stages: Stages,
    cancel: CancelToken = NEVER_CANCELLED,
) -> SlideResult:
    """The one stage sequence of a slide, for the CLI and the flows alike: skip if up to
    date (decided before anything loads: `pipeline.up_to_date`); else prepare, and infer and
    finish inside the atomic output folder. A write error (disk full, permissions changed
    mid-run) becomes the OutputError with its fix; the slide and its background readers are
    closed whatever happens. `cancel` (the stages the caller passes check it too) is checked
    between the stages: once cancelled, its reason is raised and the partial folder removed.
    Any error that ran out of file descriptors becomes `TooManyOpenFiles` naming the slide
    and the fix: never a damaged slide, a batch's known failure, or an unwritable folder; one
    that ran out of memory becomes `OutOfMemory` (`wsi_segment.address_space`)."""
    shown = shown_slide_path(str(slide_path))
    with exhaustion_named(shown), memory_named(shown):
        return _run_stages(slide_path, out_root, params, stages, cancel)


def _run_stages(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    stages: Stages,
    cancel: CancelToken,
) -> SlideResult:
    """`run_stages` without its naming of descriptor exhaustion."""
    t0 = time.perf_counter()
    skipped = up_to_date_result(slide_path, out_root, params)
    if skipped is not None:
        return skipped
    cancel.check()
    prep = stages.prepare(str(slide_path), out_root, params)
    try:
        cancel.check()
        if is_up_to_date(prep):  # up to date since the check above (another run finished it)
            summary = read_previous_summary(prep.out_dir) or {}
            seconds = time.perf_counter() - t0
            return SlideResult(prep.slide_path, "up-to-date", prep.out_dir, summary, None, seconds)
        with OutputDir(prep.out_root, prep.name, prep.params.overwrite) as out:
            try:
                outcomes = stages.infer(prep, out.work_dir)
                cancel.check()
                result = stages.finish(prep, outcomes, out)
            except OSError as exc:
                raise output_error(out.work_dir, exc) from exc
    finally:
        prep.close_prefetch()
        prep.slide.close()
    result.seconds = time.perf_counter() - t0
    return result


def prepare_stage(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    client: Client | None = None,
    at_once: int = 1,
    cancel: CancelToken = NEVER_CANCELLED,
    progress: Progress = NO_PROGRESS,
) -> PreparedSlide:
    """Stage 1 as every door runs it (`segment_slide`, the Prefect slide flow): a local run
    (no `client`) starts reading while the model loads (the readers its policy names, for
    `at_once` slides in flight on this machine); with a Dask `client` the plan is decided
    for the machine its workers describe, and the workers read for themselves, each band
    running that plan (`run_policy.for_worker`). `cancel`: checked between prepare's steps;
    `progress`: told of a wait for the model."""
    cluster = None if client is None else cluster_machine(client, cancel)
    return prepare(
        slide_path, out_root, params, early=client is None, cluster=cluster, at_once=at_once,
        cancel=cancel, progress=progress,
    )  # fmt: skip


def segment_slide(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams | None = None,
    progress: Progress = NO_PROGRESS,
    client: Client | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> SlideResult:
    """Run all stages for one slide; raises `WsiSegmentError` on expected failures, and
    `cancel`'s reason once it is cancelled (the partial folder removed)."""
    stages = Stages(
        prepare=lambda path, root, p: prepare_stage(
            path, root, p, client, cancel=cancel, progress=progress
        ),
        infer=lambda prep, work_dir: infer(
            prep, work_dir, client=client, progress=progress, cancel=cancel
        ),
        finish=lambda prep, outcomes, out: finish(prep, outcomes, out, cancel),
    )
    return run_stages(slide_path, out_root, params or SegmentParams(), stages, cancel)
