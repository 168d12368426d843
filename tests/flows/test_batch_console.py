"""The batch CLI's console: which log records reach the terminal, and real signals through
InterruptGuard (sent to this process; pytest runs tests in the main thread)."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from wsi_segment.errors import Terminated
from wsi_segment.flows.batch_console import BatchConsoleFilter, InterruptGuard


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_the_console_drops_run_errors_and_dask_info_and_keeps_the_rest() -> None:
    keep = BatchConsoleFilter().filter
    assert not keep(record("prefect.task_runs", logging.ERROR))  # "Finished in state Failed"
    assert not keep(record("prefect.flow_runs", logging.ERROR))  # "Crash detected!", tracebacks
    assert not keep(record("distributed.scheduler", logging.INFO))
    assert keep(record("prefect.flow_runs", logging.INFO))
    assert keep(record("prefect.flow_runs", logging.WARNING))  # a slide's warnings
    assert keep(record("distributed.nanny", logging.WARNING))
    assert keep(record("wsi_segment.pipeline", logging.ERROR))


def deliver(signum: int) -> None:
    """Send `signum` to this process and give the interpreter a moment to run its handler."""
    os.kill(os.getpid(), signum)
    for _ in range(100):
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
)
def test_the_first_signal_interrupts_and_later_ones_are_ignored(signum, raised) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with InterruptGuard() as guard:
        with pytest.raises(raised):
            deliver(signum)
        assert guard.fired
        deliver(signal.SIGINT)  # ignored: nothing raised
        deliver(signal.SIGTERM)
    assert {s: signal.getsignal(s) for s in before} == before


def test_prefect_passing_on_its_sigterm_is_not_a_second_interrupt() -> None:
    """Prefect raises TerminationSignal for SIGTERM during a flow, then, on the way out,
    sends SIGTERM again to the handler it had replaced: that one is ignored."""
    from prefect.exceptions import TerminationSignal

    with InterruptGuard() as guard:
        try:
            raise TerminationSignal(signal.SIGTERM)
        except TerminationSignal:
            deliver(signal.SIGTERM)  # nothing raised while the first is handled
        assert guard.fired
