"""A slide's stage tried again after a transient I/O error, the same way in both batch doors.

A network share's hiccup or a stale NFS handle fails a stage that a second try a moment later
finishes; a broken slide or a bad model fails the same way every time. Which errors are
transient is `wsi.retries.is_transient`, the one rule. The Prefect flow hands these numbers
to its stage tasks (`flows.slide_flow.stage_task`: Prefect retries them and shows each try);
the terminal's batch, which runs without Prefect, retries through `retried_stage`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from wsi_segment.pipeline.cancellation import CancelToken
from wsi_segment.wsi.retries import is_transient

P = ParamSpec("P")
R = TypeVar("R")
STAGE_RETRIES = 2  # tries after the first
STAGE_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 10.0)  # before the 2nd and the 3rd try
logger = logging.getLogger(__name__)


def retried_stage(fn: Callable[P, R], name: str, cancel: CancelToken) -> Callable[P, R]:
    """`fn` tried up to 1 + STAGE_RETRIES times while it fails with a transient error, each
    retry logged at WARNING; the wait before a retry ends at once when `cancel` is cancelled
    (its stop is raised), so an interrupted batch never sleeps out a retry delay."""

    def attempt(*args: P.args, **kwargs: P.kwargs) -> R:
        for retry, delay in enumerate(STAGE_RETRY_DELAYS_S[:STAGE_RETRIES], start=1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                logger.warning(
                    "stage %s failed with a transient error (%s: %s); retry %d of %d in %g s",
                    name, type(exc).__name__, exc, retry, STAGE_RETRIES, delay,
                )  # fmt: skip
            if cancel.wait(delay):
                raise cancel.stop()
        return fn(*args, **kwargs)

    return attempt
