"""SlideWatch with real threads: a slide past its deadline is stopped in its own thread, an
interrupt stops the running slides and lets no other start."""

from __future__ import annotations

import threading
import time

import pytest

from wsi_segment.flows.slide_watch import (
    SlideInterrupted,
    SlideNotStarted,
    SlideStopped,
    SlideTimedOut,
    SlideWatch,
)


def busy_slide(watch: SlideWatch, index: int, seconds: float, caught: dict) -> None:
    """A slide that polls like the pipeline's waits do (short sleeps) for `seconds`."""
    t0 = time.monotonic()
    try:
        with watch.running(index):
            while time.monotonic() - t0 < seconds:
                time.sleep(0.01)
        caught[index] = None
    except SlideStopped as exc:
        caught[index] = (type(exc), time.monotonic() - t0)


def test_a_slide_past_its_deadline_is_stopped_and_one_within_it_is_not() -> None:
    caught: dict = {}
    with SlideWatch(0.5) as watch:
        threads = [
            threading.Thread(target=busy_slide, args=(watch, 0, 30.0, caught)),
            threading.Thread(target=busy_slide, args=(watch, 1, 0.1, caught)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    assert caught[1] is None
    kind, took = caught[0]
    assert kind is SlideTimedOut
    assert 0.5 <= took < 2.0  # the watcher looks every 0.2 s
    assert watch.started() == set()


def test_an_interrupt_stops_the_running_slides_and_no_other_starts() -> None:
    caught: dict = {}
    with SlideWatch(None) as watch:
        t = threading.Thread(target=busy_slide, args=(watch, 0, 30.0, caught))
        t.start()
        while watch.started() != {0}:
            time.sleep(0.01)
        watch.interrupt_all()
        t.join(timeout=10)
        assert caught[0][0] is SlideInterrupted and caught[0][1] < 2.0
        with pytest.raises(SlideNotStarted), watch.running(1):
            pass
