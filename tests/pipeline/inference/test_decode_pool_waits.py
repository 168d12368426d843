"""`wait_uninterrupted` with real threads and the batch's real stop (an exception raised in
the waiting thread from outside, `flows.slide_watch`): the cleanup wait is not cut short,
and the stop is handed back rather than lost."""

from __future__ import annotations

import threading
import time

import pytest

from wsi_segment.flows.slide_watch import SlideInterrupted, SlideWatch
from wsi_segment.pipeline.inference.decode_pool import wait_uninterrupted


def poll_until(event: threading.Event) -> None:
    """A wait that runs Python code (where a stop from outside lands), like a join's loop."""
    while not event.is_set():
        time.sleep(0.01)


def test_a_stop_during_the_wait_is_returned_once_the_wait_is_over() -> None:
    done, seen = threading.Event(), {}

    def slide() -> None:
        with watch.running(0):
            t0 = time.monotonic()
            seen["stop"] = wait_uninterrupted(poll_until, done)
            seen["waited"] = time.monotonic() - t0
            seen["done"] = done.is_set()

    with SlideWatch(None) as watch:
        thread = threading.Thread(target=slide)
        thread.start()
        while watch.started() != {0}:
            time.sleep(0.01)
        watch.interrupt_all()
        time.sleep(0.3)  # the stop has landed in the wait by now; the wait goes on
        done.set()
        thread.join(timeout=10)
    assert isinstance(seen["stop"], SlideInterrupted)
    assert seen["done"] and seen["waited"] >= 0.3


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
