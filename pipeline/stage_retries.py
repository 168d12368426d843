"""A slide's stage tried again after a transient I/O error, the same way in both batch doors.

A network share's hiccup or a stale NFS handle fails a stage that a second try a moment later
finishes; a broken slide or a bad model fails the same way every time. Which errors are
transient is `wsi.retries.is_transient`, the one rule. The Prefect flow hands these numbers
to its stage tasks (`flows.slide_flow.stage_task`: Prefect retries them and shows each try);
the terminal's batch, which runs without Prefect, retries through `retried_stage`, the reads'
own retry loop (`wsi.retries.with_retries`) with these delays and a wait its stop can cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from wsi_segment.pipeline.cancellation import CancelToken
from wsi_segment.wsi.retries import with_retries

P = ParamSpec("P")
R = TypeVar("R")
STAGE_RETRY_DELAYS_S: tuple[float, ...] = (1.0, 10.0)  # before the 2nd and the 3rd try
STAGE_RETRIES = len(STAGE_RETRY_DELAYS_S)  # tries after the first


def retried_stage(fn: Callable[P, R], name: str, cancel: CancelToken) -> Callable[P, R]:
    """`fn` as `wsi.retries.with_retries` calls it, with the stages' delays: each retry
    logged at WARNING; the wait before a retry ends at once when `cancel` is cancelled (its
    stop is raised), so an interrupted batch never sleeps out a retry delay."""

    def wait(delay: float) -> None:
        if cancel.wait(delay):
            raise cancel.stop()

    def attempt(*args: P.args, **kwargs: P.kwargs) -> R:
        return with_retries(
            lambda: fn(*args, **kwargs), f"stage {name}", STAGE_RETRY_DELAYS_S, wait
        )

    return attempt
