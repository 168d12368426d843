"""band_task on a worker: what it does to the worker's own console output."""

from __future__ import annotations

import logging

import pytest

from wsi_segment.pipeline.inference.band_task import quiet_cancelled_tasks

CANCELLED = (
    "Async instruction for <Task cancelled name=\"execute('band_precision-df6b')\" "
    "coro=<Worker.execute() done>> ended with CancelledError"
)


def test_a_cancelled_band_leaves_no_worker_warning_and_other_warnings_stay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen under load: Ctrl-C during a band's precision task printed the worker's
    CancelledError notice beside the batch's one `error:` line."""
    state_machine = logging.getLogger("distributed.worker.state_machine")
    before = list(state_machine.filters)
    try:
        quiet_cancelled_tasks()
        quiet_cancelled_tasks()  # a second band on the worker adds nothing
        assert len(state_machine.filters) == len(before) + 1
        with caplog.at_level(logging.WARNING, logger=state_machine.name):
            state_machine.warning(CANCELLED)
            state_machine.warning("Could not find data: {'x': ['tls://127.0.0.1:1']}")
            state_machine.warning("Async instruction for <Task> ended with ValueError")
        assert [r.getMessage() for r in caplog.records] == [
            "Could not find data: {'x': ['tls://127.0.0.1:1']}",
            "Async instruction for <Task> ended with ValueError",
        ]
    finally:
        state_machine.filters[:] = before
