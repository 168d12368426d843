"""The terminal's door onto the batch loop: `wsi-segment batch` in this process, no server.

With no Prefect API configured, a batch needs nothing of Prefect: the loop
(`flows.batch_loop`) runs here as plain functions, each slide in a daemon thread
(`flows.daemon_threads`), its stages retried on transient errors as the flow's tasks are
(`pipeline.stage_retries`). Its lines go to the terminal: `warning:` / `error:` as the rest
of the CLI writes them, and (without `--quiet`) the batch's start and a line per ended slide.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.flows.batch_loop import (
    BATCH_LOGGER,
    BatchDoor,
    BatchRequest,
    run_batch,
    run_slide_job,
)
from wsi_segment.pipeline import segment
from wsi_segment.pipeline.stage_retries import retried_stage

if TYPE_CHECKING:
    from distributed import Client

    from wsi_segment.pipeline.cancellation import CancelToken
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.prepare import PreparedSlide
    from wsi_segment.pipeline.segment import SlideResult

PIPELINE_LOGGER = "wsi_segment"  # the pipeline's own warnings and the batch's lines


def run_terminal_batch(request: BatchRequest, quiet: bool) -> list[SlideResult]:
    """Every slide's result: the batch loop in this process, its lines on stderr while it
    runs (the morning report is written; the CLI prints where)."""
    door = BatchDoor(
        log=logging.getLogger(BATCH_LOGGER),
        run_slide=lambda job: run_slide_job(job, slide_stages, str),
        warnings_to_log=contextlib.nullcontext,
        log_slide_warnings=lambda result: None,  # the CLI prints every result's warnings
    )
    with terminal_log(quiet):
        return run_batch(request, door)[0]


def slide_stages(
    slide: str,
    out: str,
    params: SegmentParams,
    client: Client | None,
    at_once: int,
    cancel: CancelToken,
) -> SlideResult:
    """`pipeline.segment.run_stages` with each stage retried on transient errors."""

    def prepare(path: str, root: str | Path, p: SegmentParams) -> PreparedSlide:
        return segment.prepare_stage(path, root, p, client, at_once, cancel)

    stages = segment.Stages(
        prepare=retried_stage(prepare, "open-and-tissue", cancel),
        infer=retried_stage(
            lambda prep, work_dir: segment.infer(prep, work_dir, client=client, cancel=cancel),
            "inference",
            cancel,
        ),
        finish=retried_stage(
            lambda prep, outcomes, out: segment.finish(prep, outcomes, out, cancel),
            "polygons-and-outputs",
            cancel,
        ),
    )
    return segment.run_stages(slide, out, params, stages, cancel)


class TerminalFormatter(logging.Formatter):
    """`warning: ...` and `error: ...` as the CLI's own lines; INFO as it is."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


@contextlib.contextmanager
def terminal_log(quiet: bool) -> Iterator[None]:
    """On stderr while the block runs: the pipeline's warnings and errors, and the batch's
    own INFO lines unless `quiet`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TerminalFormatter())
    handler.addFilter(
        lambda record: (
            record.levelno >= logging.WARNING or (not quiet and record.name == BATCH_LOGGER)
        )
    )
    pipeline = logging.getLogger(PIPELINE_LOGGER)
    level, propagate = pipeline.level, pipeline.propagate
    pipeline.addHandler(handler)
    pipeline.setLevel(logging.INFO)
    pipeline.propagate = False
    try:
        yield
    finally:
        pipeline.removeHandler(handler)
        pipeline.setLevel(level)
        pipeline.propagate = propagate
