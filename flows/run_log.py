"""What a flow run logs about its slides, so a deployed run's logs show what a terminal shows.

The CLI prints a `warning:` line per `pipeline.run_warnings.slide_warnings`; a flow logs the
same words at WARNING through Prefect's run logger, which sends them to the server. The
pipeline's own `logging` warnings (loggers under `wsi_segment`, e.g. a slide without mpp)
reach the terminal through the root logger but not the server: while a flow runs they are
handed to its run logger instead (from any thread of this process; Dask worker processes
keep their own logs). In a deployment's flow run, both name the flow's parameters where the
CLI names its options (`flows.door_words`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import Any

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect import get_run_logger  # noqa: E402

from wsi_segment.flows.batch_console import REPORT_LINE  # noqa: E402
from wsi_segment.flows.door_words import run_words, words_of_this_run  # noqa: E402
from wsi_segment.pipeline.run_warnings import slide_warnings  # noqa: E402
from wsi_segment.pipeline.segment import SlideResult  # noqa: E402

PIPELINE_LOGGER = "wsi_segment"


def log_slide_warnings(result: SlideResult) -> None:
    """Each warning of a slide's result at WARNING on the current run's logger (marked
    `REPORT_LINE`: the CLI prints it itself)."""
    logger = get_run_logger()
    for warning in slide_warnings(result):
        logger.warning("%s", run_words(warning), extra=REPORT_LINE)


class _ToRunLogger(logging.Handler):
    """Re-logs records on a run logger (which carries the flow run id to the server), in
    the context the handler was made in (the flow's): a record from a thread that did not
    inherit it (a reader thread retrying a read, a future's done callback) then reaches
    Prefect with the settings the flow runs under (a test harness's server, whose
    settings are a context's)."""

    def __init__(
        self,
        run_logger: logging.Logger | logging.LoggerAdapter[Any],
        words: Callable[[str], str],
    ) -> None:
        super().__init__(logging.WARNING)
        self.run_logger = run_logger
        self.words = words
        self.context = contextvars.copy_context()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.words(record.getMessage())
            # a copy per record: one context cannot be entered by two threads at once
            self.context.copy().run(self.run_logger.log, record.levelno, "%s", message)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def pipeline_warnings_to_run_log() -> Iterator[None]:
    """While the block runs, the pipeline's WARNING records go to this flow run's logger
    (and through it to the console, once) instead of only to the root logger's console."""
    handler = _ToRunLogger(get_run_logger(), words_of_this_run())
    pipeline = logging.getLogger(PIPELINE_LOGGER)
    propagate = pipeline.propagate
    pipeline.addHandler(handler)
    pipeline.propagate = False
    try:
        yield
    finally:
        pipeline.removeHandler(handler)
        pipeline.propagate = propagate
