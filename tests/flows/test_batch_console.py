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


def test_quiet_drops_prefects_info_too_and_the_cli_drops_what_it_prints_itself() -> None:
    """`batch --quiet`: no Prefect INFO line (the server, every task's "Finished in state
    Completed()"); its warnings stay. A run-logger warning marked `REPORT_LINE` (a slide's
    warning, a known failure) is printed by the CLI itself, so it is dropped either way."""
    from wsi_segment.flows.batch_console import REPORT_LINE

    quiet = BatchConsoleFilter(quiet=True).filter
    assert not quiet(record("prefect.task_runs", logging.INFO))
    assert not quiet(record("prefect.flow_runs", logging.INFO))
    assert not quiet(record("prefect", logging.INFO))
    assert quiet(record("prefect.flow_runs", logging.WARNING))
    assert quiet(record("wsi_segment.pipeline", logging.INFO))
    for keep in (quiet, BatchConsoleFilter().filter):
        marked = record("prefect.task_runs", logging.WARNING)
        marked.__dict__.update(REPORT_LINE)
        assert not keep(marked)


def deliver(signum: int) -> None:
    """Send `signum` to this process and give the interpreter a moment to run its handler."""
    os.kill(os.getpid(), signum)
    for _ in range(100):
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated), (signal.SIGHUP, Terminated)],
)
def test_the_first_signal_interrupts_and_later_ones_are_ignored(signum, raised) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with InterruptGuard() as guard:
        with pytest.raises(raised) as caught:
            deliver(signum)
        if raised is Terminated:
            assert caught.value.signum == signum  # SIGHUP exits 129, SIGTERM 143
        assert guard.fired
        deliver(signal.SIGINT)  # ignored: nothing raised
        deliver(signal.SIGTERM)
        deliver(signal.SIGHUP)
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


def test_a_terminated_raised_over_the_batchs_interrupt_keeps_its_results() -> None:
    """Prefect's passed-on SIGTERM can land while the batch's `BatchTerminated` is on its
    way out, not handled: our handler's `Terminated` then replaces it. The CLI still finds
    the results (and the table) as its context, and reports the signal it had."""
    from wsi_segment.flows.batch_interrupt import BatchInterrupted, BatchTerminated
    from wsi_segment.flows.cli_batch import batch_stop, cli_interrupt
    from wsi_segment.pipeline.segment import SlideResult

    results = [SlideResult("a.svs", "done", None)]
    try:
        try:
            raise BatchTerminated(signal.SIGTERM, results)
        finally:
            raise Terminated("terminated by signal 15", signal.SIGTERM)
    except Terminated as exc:
        stopped = batch_stop(exc)
    assert isinstance(stopped, BatchTerminated) and stopped.results == results
    interrupt = cli_interrupt(stopped)
    assert isinstance(interrupt, Terminated) and interrupt.signum == signal.SIGTERM
    assert batch_stop(KeyboardInterrupt()) is None  # before any slide: nothing to report
    try:
        raise BatchInterrupted(results) from Terminated("hang-up", signal.SIGHUP)
    except BatchInterrupted as exc:
        hangup = cli_interrupt(exc)
    assert isinstance(hangup, Terminated) and hangup.signum == signal.SIGHUP
