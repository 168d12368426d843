"""The batch's slide threads with real threads and real processes: a slide thread blocked in
a system call (where it checks no cancellation token) neither holds the batch on leaving the
pool after an interrupt nor the process at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError

import pytest

from wsi_segment.flows.daemon_threads import DaemonThreadExecutor, daemon_pool


def test_calls_run_at_most_max_workers_at_a_time_each_in_a_daemon_thread() -> None:
    lock, running, most, daemon = threading.Lock(), [0], [0], []

    def call(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            daemon.append(threading.current_thread().daemon)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if i == 3:
            raise ValueError("slide 3")
        return i * 10

    pool = DaemonThreadExecutor(2)
    futures = [pool.submit(call, i) for i in range(6)]
    assert [f.result(timeout=10) for f in futures if f is not futures[3]] == [0, 10, 20, 40, 50]
    with pytest.raises(ValueError, match="slide 3"):
        futures[3].result()
    pool.shutdown(wait=True)
    assert most[0] == 2 and daemon == [True] * 6
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(call, 0)


def test_shutdown_cancels_the_calls_not_started_and_waits_only_when_asked() -> None:
    release = threading.Event()
    pool = DaemonThreadExecutor(1)
    first = pool.submit(release.wait, 10)
    later = pool.submit(lambda: "never")
    while not first.running():
        time.sleep(0.01)
    t0 = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - t0 < 0.5  # did not wait for the running call
    assert later.cancelled()
    with pytest.raises(CancelledError):
        later.result()
    release.set()
    assert first.result(timeout=10) is True


def test_leaving_the_pool_on_an_interrupt_does_not_wait_for_a_stuck_slide() -> None:
    """A slide blocked in `os.read`: leaving the pool on KeyboardInterrupt returns at once
    (a slide not started is cancelled); leaving it normally waits for the running slide."""
    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt), daemon_pool(1) as pool:
            stuck = pool.submit(os.read, r, 1)
            queued = pool.submit(lambda: "never")
            while not stuck.running():  # wait until the read is under way
                time.sleep(0.01)
            t0 = time.monotonic()
            raise KeyboardInterrupt
        assert time.monotonic() - t0 < 1.0
        assert not stuck.done() and queued.cancelled()
        os.write(w, b"x")  # unblock it: the thread ends on its own
        assert stuck.result(timeout=30) == b"x"

        with daemon_pool(1) as pool:
            slow = pool.submit(os.read, r, 1)
            while not slow.running():
                time.sleep(0.01)
            t0 = time.monotonic()
            threading.Timer(0.5, os.write, (w, b"y")).start()
        assert time.monotonic() - t0 >= 0.5 and slow.done()
    finally:
        os.close(r)
        os.close(w)


EXIT_WITH_A_STUCK_THREAD = """
import os, sys
from {module} import {executor}
pool = {executor}(1)
r, w = os.pipe()
pool.submit(os.read, r, 1)  # blocked in the kernel: never returns
pool.shutdown(wait=False)
print("exiting", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize(
    ("module", "executor", "exits"),
    [
        ("wsi_segment.flows.daemon_threads", "DaemonThreadExecutor", True),
        ("concurrent.futures", "ThreadPoolExecutor", False),
    ],
)
def test_a_process_exits_with_a_slide_thread_stuck_only_on_daemon_threads(
    module: str, executor: str, exits: bool
) -> None:
    """The process ends with its exit code although a thread never returns; with the
    standard library's executor it hangs at exit (the interpreter joins its threads)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", EXIT_WITH_A_STUCK_THREAD.format(module=module, executor=executor)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=60 if exits else 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert out == "exiting\n"
    assert (proc.returncode == 3) is exits, proc.returncode
