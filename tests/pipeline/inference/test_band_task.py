"""band_task on a worker: what it does to the worker's own console output."""

from __future__ import annotations

import logging

from wsi_segment.pipeline.inference.band_task import drop_cancelled_notice, quiet_cancelled_tasks

CANCELLED = (
    "Async instruction for <Task cancelled name=\"execute('band_precision-df6b')\" "
    "coro=<Worker.execute() done>> ended with CancelledError"
)


def test_a_cancelled_band_leaves_no_worker_warning_and_other_warnings_stay() -> None:
    """Seen under load: Ctrl-C during a band's precision task printed the worker's
    CancelledError notice beside the batch's one `error:` line."""
    state_machine = logging.getLogger("distributed.worker.state_machine")
    original = list(state_machine.filters)  # an in-process band earlier may have added one
    before = [f for f in original if f is not drop_cancelled_notice]
    state_machine.filters[:] = before
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    level = state_machine.level
    state_machine.addHandler(handler)  # on the logger itself: Dask's config may stop propagation
    state_machine.setLevel(logging.WARNING)
    try:
        quiet_cancelled_tasks()
        quiet_cancelled_tasks()  # a second band on the worker adds nothing
        assert len(state_machine.filters) == len(before) + 1
        state_machine.warning(CANCELLED)
        state_machine.warning("Could not find data: {'x': ['tls://127.0.0.1:1']}")
        state_machine.warning("Async instruction for <Task> ended with ValueError")
        assert seen == [
            "Could not find data: {'x': ['tls://127.0.0.1:1']}",
            "Async instruction for <Task> ended with ValueError",
        ]
    finally:
        state_machine.filters[:] = original
        state_machine.removeHandler(handler)
        state_machine.setLevel(level)
