"""wsi_segment.flows.signal_stop: a signal stops the CLI's runs even where Python drops its
exception, and a signal the process inherited as ignored stays ignored (`nohup`).

Real signals to this process (the handlers run in pytest's main thread); the end-to-end
cases (a run under `nohup` hung up, SIGTERM to a running CLI) are in
tests/reliability/test_interruption.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import pytest

from tests.conftest import foreground_signals
from wsi_segment.errors import SlideInterrupted, Terminated
from wsi_segment.flows.cli import NotedSignals
from wsi_segment.flows.signal_stop import SignalStop, signals_stop_runs


class SignalledWhileFinalised:
    """An object whose finaliser signals this process and runs on until the handler has
    run inside it: where Python prints the handler's exception and drops it."""

    def __init__(self, signum: int, stop: SignalStop) -> None:
        self.signum, self.stop = signum, stop

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        deadline = time.monotonic() + 5
        while self.stop.signum is None and time.monotonic() < deadline:
            pass  # the handler runs between two of these bytecodes


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGTERM, Terminated), (signal.SIGHUP, Terminated), (signal.SIGINT, KeyboardInterrupt)],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_signal_whose_exception_python_drops_still_cancels_the_runs(signum, raised):
    dropped: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = dropped.append  # what Python does with an exception in a finaliser
    try:
        with foreground_signals(), signals_stop_runs() as stop:
            SignalledWhileFinalised(signum, stop)  # finalised at once
            # the exception was dropped, the token holds the stop
            assert [type(d.exc_value) for d in dropped] == [raised]
            assert stop.token.cancelled
            with pytest.raises(SlideInterrupted):
                stop.token.check()
    finally:
        sys.unraisablehook = hook
    again = stop.exception()  # what the command raises instead
    assert type(again) is raised
    if raised is Terminated:
        assert isinstance(again, Terminated) and again.signum == signum


def test_the_handlers_raise_the_signals_exception_and_are_given_back():
    with foreground_signals():
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        with signals_stop_runs() as stop, pytest.raises(Terminated) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler
        assert info.value.signum == signal.SIGTERM and stop.token.cancelled
        assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_the_process_ignores_stays_ignored():
    """`nohup` starts the run with SIGHUP ignored, so that it outlives its terminal: neither
    the CLI's handlers nor the run's stop take that back."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_stop_runs() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == stop.handle
            with NotedSignals():
                assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGHUP)  # the terminal closed: nothing happens
                time.sleep(0.1)
            assert not stop.token.cancelled and stop.signum is None
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
