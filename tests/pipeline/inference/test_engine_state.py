"""The engine's cleanup joins every part it started, even when an interrupt (SIGTERM, a
batch's stop) cut a thread's start short: `join` would refuse a thread Python has not
flagged started ("cannot join thread before it is started", seen once under load).

`wait_uninterrupted` with a real signal whose handler raises in the waiting (main) thread,
as Prefect's SIGTERM handler does in a flow run: the cleanup wait is not cut short, and the
exception is handed back rather than lost."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wsi_segment.pipeline.inference.engine_state import (
    picklable,
    start_parts,
    wait_uninterrupted,
)
from wsi_segment.pipeline.threads import WaitableThread

REPO = Path(__file__).resolve().parents[3]


def test_started_parts_are_kept_and_waited_for_until_they_end() -> None:
    release = threading.Event()
    ended: list[int] = []

    def part(i: int) -> None:
        release.wait(timeout=30)
        ended.append(i)

    threads: list[WaitableThread] = []
    start_parts([(part, (0,)), (part, (1,))], threads)
    assert len(threads) == 2 and not any(t.wait(0.05) for t in threads)
    release.set()
    for thread in threads:
        thread.wait()
    assert sorted(ended) == [0, 1] and all(t.ended for t in threads)


def poll_until(event: threading.Event) -> None:
    """A wait that runs Python code (where a signal's handler runs), like a join's loop."""
    while not event.is_set():
        time.sleep(0.01)


class Signalled(BaseException):
    """What the handler raises: not an `Exception`, as Prefect's `TerminationSignal`."""


def raise_signalled(signum: int, frame: object) -> None:
    raise Signalled(signum)


def signal_during_wait() -> tuple[str, tuple[object, ...], bool, float]:
    """The scenario, run in a fresh interpreter: SIGUSR1 sent to this process lands while
    `wait_uninterrupted` polls; returns (exception type, its args, wait done, seconds)."""
    assert threading.current_thread() is threading.main_thread()  # where handlers run
    done, polling = threading.Event(), threading.Event()

    def wait() -> None:
        polling.set()
        poll_until(done)

    def signal_then_end() -> None:
        # sent once the wait polls (a fixed delay raced a loaded machine's thread starts)
        polling.wait()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.4)  # the signal has landed in the wait by then
        done.set()

    previous = signal.signal(signal.SIGUSR1, raise_signalled)
    try:
        threading.Thread(target=signal_then_end, daemon=True).start()
        t0 = time.monotonic()
        stop = wait_uninterrupted(wait)
        waited = time.monotonic() - t0
    finally:
        signal.signal(signal.SIGUSR1, previous)
    return type(stop).__name__, getattr(stop, "args", ()), done.is_set(), waited


def test_a_signals_exception_during_the_wait_is_returned_once_the_wait_is_over() -> None:
    """In its own process: a signal sent to the whole test session lands on whichever of its
    threads the kernel picks, among the many that earlier tests' libraries left running."""
    code = (
        "from tests.pipeline.inference.test_engine_state import signal_during_wait as s; "
        "print(repr(s()))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    name, args, done, waited = ast.literal_eval(ran.stdout.strip().splitlines()[-1])
    assert name == "Signalled" and args == (int(signal.SIGUSR1),)
    assert done and waited >= 0.3


def test_a_second_ctrl_c_is_dropped_and_errors_of_the_wait_propagate() -> None:
    calls = []

    def interrupted_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    assert wait_uninterrupted(interrupted_once) is None
    assert len(calls) == 2

    def broken() -> None:
        raise AssertionError("join_thread before close")

    with pytest.raises(AssertionError, match="before close"):
        wait_uninterrupted(broken)


def _refuse_to_rebuild(text: str) -> Exception:
    raise TypeError(f"cannot rebuild {text!r}")


class UnrebuildableError(Exception):
    """Pickles, but cannot be rebuilt (as an exception whose `__init__` takes other arguments
    than its `args`, unless a library such as distributed's tblib teaches pickle otherwise)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_to_rebuild, (str(self),))


def test_an_error_goes_through_a_pipe_as_itself_or_as_its_text() -> None:
    fallback = RuntimeError("its text")
    plain = ValueError("bad tile")
    assert picklable(plain, fallback) is plain
    assert picklable(UnrebuildableError("a.svs: bad"), fallback) is fallback
    holding_a_lock = ValueError(threading.Lock())  # does not pickle at all
    assert picklable(holding_a_lock, fallback) is fallback
