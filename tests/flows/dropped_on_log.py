"""A stop Python drops inside a running flow, for the flows' dropped-stop tests: a real
finaliser raising the stop, run by a log handler at a chosen record, in the thread that
logged it (the flow's, for the flow's own records)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

from tests.flows.test_batch_interrupt import StopWhileFinalised


class DropOnLog(logging.Handler):
    """At the first record containing `text`, finalises an object whose finaliser raises
    `stop`: Python drops it in the thread that logged, as it drops a signal handler's
    exception that lands inside a finaliser (tests/flows/test_batch_interrupt.py). Keeps
    every record's message (`messages`)."""

    def __init__(self, text: str, stop: BaseException) -> None:
        super().__init__()
        self.text, self.stop, self.fired = text, stop, False
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if not self.fired and self.text in message:
            self.fired = True
            StopWhileFinalised(self.stop)  # finalised at once: dropped here


@contextlib.contextmanager
def stop_dropped_on_log(logger: str, text: str, stop: BaseException) -> Iterator[DropOnLog]:
    """`DropOnLog` on `logger` for the block, with Python's unraisable hook quiet (the flow
    hands the drop on: nothing printed) and a SIGTERM handler that does nothing: Prefect
    passes a `TerminationSignal` on to the handler it found as a second SIGTERM, which would
    end this test process. The hook must come back as the block found it (the flow gives it
    back); all three are restored after."""
    drop = DropOnLog(text, stop)
    run_logger = logging.getLogger(logger)
    run_logger.addHandler(drop)
    hook = sys.unraisablehook
    quiet = sys.unraisablehook = lambda _unraisable: None
    handler = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        yield drop
        assert sys.unraisablehook is quiet  # given back by the flow
    finally:
        signal.signal(signal.SIGTERM, handler)
        sys.unraisablehook = hook
        run_logger.removeHandler(drop)
