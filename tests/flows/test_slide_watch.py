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


def thread_starting_slide(watch: SlideWatch, caught: list) -> None:
    """A slide that keeps starting short threads (the pipeline starts readers, writers and
    decoder supervisors), so a stop often lands while one is being started."""
    try:
        with watch.running(0):
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30.0:
                helper = threading.Thread(target=lambda: None)
                helper.start()
                helper.join()
        caught.append(None)
    except SlideStopped as exc:
        caught.append(type(exc))


def test_a_stop_sent_while_the_slide_starts_a_thread_reaches_the_slide() -> None:
    """The stop reaches the slide's own thread, not a thread it is starting (which would die
    before it said it started, leaving the slide waiting in `Thread.start` for ever)."""
    for _ in range(10):
        caught: list = []
        with SlideWatch(None) as watch:
            slide = threading.Thread(
                target=thread_starting_slide, args=(watch, caught), daemon=True
            )
            slide.start()
            while watch.started() != {0}:
                time.sleep(0.001)
            time.sleep(0.02)
            watch.interrupt_all()
            slide.join(timeout=10)
            assert not slide.is_alive(), "the slide never got its stop"
        assert caught == [SlideInterrupted]
