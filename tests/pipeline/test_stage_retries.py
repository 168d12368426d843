"""A batch stage without Prefect retried as the flow's tasks are: transient errors only, and
a stop cuts the wait before a retry short."""

from __future__ import annotations

import logging
import time

import pytest

from wsi_segment.errors import SlideInterrupted
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, Cancellation
from wsi_segment.pipeline.stage_retries import STAGE_RETRY_DELAYS_S, retried_stage


class Flaky:
    """Fails with `error` its first `failures` calls, then returns its argument doubled."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self, x: int) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return 2 * x


def test_a_transient_error_is_retried_after_the_first_delay_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = Flaky(1, ConnectionError("share hiccup"))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert retried_stage(stage, "inference", NEVER_CANCELLED)(21) == 42
    assert stage.calls == 2
    assert time.monotonic() - t0 >= STAGE_RETRY_DELAYS_S[0]
    (record,) = [r for r in caplog.records if "stage inference failed" in r.getMessage()]
    assert "ConnectionError: share hiccup" in record.getMessage()
    assert f"attempt 2 of {len(STAGE_RETRY_DELAYS_S) + 1}" in record.getMessage()


def test_an_error_that_waiting_does_not_fix_is_raised_at_once() -> None:
    stage = Flaky(1, FileNotFoundError("slide.svs"))
    with pytest.raises(FileNotFoundError):
        retried_stage(stage, "open-and-tissue", NEVER_CANCELLED)(1)
    assert stage.calls == 1


def test_a_stopped_slide_does_not_sleep_out_the_retry_delay() -> None:
    """The batch's stop (Ctrl-C, the slide's time limit) during the wait before a retry:
    its exception at once, no second try (the delays are 1 s and 10 s)."""
    cancel = Cancellation()
    cancel.cancel(SlideInterrupted)
    stage = Flaky(5, TimeoutError("read timed out"))
    t0 = time.monotonic()
    with pytest.raises(SlideInterrupted):
        retried_stage(stage, "inference", cancel)(1)
    assert time.monotonic() - t0 < 0.5 and stage.calls == 1
