"""pipeline.threads: a thread's end waited for through an interrupt, and waited for again;
a function run in the background, its result waited for through an interrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wsi_segment.pipeline.threads import (
    START_WAIT_S,
    STOP_WAIT_S,
    Background,
    WaitableThread,
    stop_wait_s,
)

REPO = Path(__file__).resolve().parents[2]


class Interrupted(BaseException):
    """What the test's signal handler raises in the main thread, as Ctrl-C's does."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def interrupt_during(wait: Callable[[], object]) -> None:
    """Call `wait` while SIGUSR1 raises `Interrupted` in this thread 0.2 s in (as Ctrl-C
    raises KeyboardInterrupt); `wait` must give way to it."""
    previous = signal.signal(signal.SIGUSR1, _raise_interrupted)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            wait()
    finally:
        timer.join()
        signal.signal(signal.SIGUSR1, previous)


def in_own_process(scenario: str, *args: str) -> None:
    """Run `scenario` (a function of this module, its checks inside) in a fresh interpreter:
    its signal goes to that process, never to the test session's own, where earlier tests'
    libraries may have left the main thread's signal stack unmapped (see
    tests/flows/test_batch_console.py, `guard_run`)."""
    code = f"import sys; from tests.pipeline.test_threads import {scenario} as s; s(*sys.argv[1:])"
    ran = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr


def wait_cut_then_waited_again() -> None:
    release = threading.Event()
    thread = WaitableThread(release.wait, (30,))
    thread.start()
    interrupt_during(thread.wait)
    assert not thread.ended and not thread.wait(0.2)
    release.set()
    assert thread.wait(5) and thread.ended


def test_a_wait_cut_by_an_interrupt_can_be_waited_again():
    """The cleanup after an interrupt waits again, and that wait lasts until the thread
    really ended (threading's own join, on 3.11, would return at once: `ended` checks)."""
    in_own_process("wait_cut_then_waited_again")


def test_a_thread_never_started_counts_as_ended_after_the_start_wait():
    thread = WaitableThread(time.sleep, (0,))
    t0 = time.monotonic()
    assert thread.wait() and time.monotonic() - t0 >= START_WAIT_S - 0.05


def test_wait_with_a_timeout_says_whether_it_ended():
    release = threading.Event()
    thread = WaitableThread(release.wait, (30,))
    thread.start()
    assert not thread.wait(0.05)
    release.set()
    assert thread.wait(5)


def _slow_write(path, seconds: float) -> str:
    time.sleep(seconds)
    path.write_text("done")
    return "value"


def interrupt_waits_for_the_thread(folder: str) -> None:
    done = Path(folder) / "done"
    job = Background(_slow_write, done, 1.0)
    interrupt_during(job.result_through_interrupts)
    assert done.read_text() == "done"


def test_an_interrupt_waits_for_the_thread_then_is_raised(tmp_path):
    """The interrupt lands while the thread writes: the write ends first, then it is raised,
    so a cleanup that follows finds nothing still being written."""
    in_own_process("interrupt_waits_for_the_thread", str(tmp_path))


def test_without_an_interrupt_it_is_the_result(tmp_path):
    assert Background(_slow_write, tmp_path / "x", 0.0).result_through_interrupts() == "value"


def test_the_functions_error_is_raised(tmp_path):
    with pytest.raises(FileNotFoundError):
        Background(_slow_write, tmp_path / "no" / "x", 0.0).result_through_interrupts()


def result_alone_is_interrupted(folder: str) -> None:
    done = Path(folder) / "done"
    job = Background(_slow_write, done, 1.0)
    interrupt_during(job.result)
    assert not done.exists()
    job.result_through_interrupts()


def test_result_alone_is_interrupted_at_once(tmp_path):
    """The plain wait gives way to the interrupt (what the other method exists to avoid)."""
    in_own_process("result_alone_is_interrupted", str(tmp_path))


def test_only_a_remote_slides_reader_is_left_after_a_bounded_wait(tmp_path) -> None:
    """A remote read cannot be interrupted: its thread is waited for STOP_WAIT_S; a local
    one until it ends (openslide's C code must not run while the process exits)."""
    assert stop_wait_s("https://store.example/slides/a.svs") == STOP_WAIT_S
    assert stop_wait_s("s3://bucket/a.svs") == STOP_WAIT_S
    assert stop_wait_s(str(tmp_path / "a.svs")) is None
    assert stop_wait_s(f"file://{tmp_path}/a.svs") is None


def test_a_background_wait_gives_up_without_taking_the_result() -> None:
    release = threading.Event()
    bg = Background(release.wait)
    assert bg.wait(0.05) is False  # still running: the caller goes on
    release.set()
    assert bg.wait(None) is True
    assert bg.result() is True
