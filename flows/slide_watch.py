"""Stopping a batch's slides from outside their threads: a per-slide time limit, and Ctrl-C.

A batch runs each slide in a thread of its process (`flows.batch_flow`); a thread cannot be
killed, so a slide is stopped by raising an exception in its thread
(`PyThreadState_SetAsyncExc`): it arrives at the thread's next Python instruction, and every
wait in the slide path polls (Dask futures, the engine's queues, decoder rings), so a slide
stops within a fraction of a second, and its own `finally` blocks do the cleanup they do on
any error: the slide's Dask bands are told to stop (`band_runner.gather_all`), decoder
processes end, the slide closes, and the partial folder and lock are removed
(`pipeline.outputs.output_dir.OutputDir`). The exceptions are `BaseException`s, so no
`except Exception` on the way turns them into a slide error of another kind.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

POLL_S = 0.2
START_WAIT_S = 1.0  # the most a stop waits for threads being started to be running


class SlideStopped(BaseException):
    """Raised in a slide's thread to stop it; the slide task turns it into the slide's result."""


class SlideTimedOut(SlideStopped):
    """The slide ran longer than the batch's `slide_timeout`."""


class SlideInterrupted(SlideStopped):
    """The batch was interrupted (Ctrl-C, SIGTERM) while this slide ran."""


class SlideNotStarted(SlideStopped):
    """The batch was interrupted before this slide started: it does not start."""


@dataclass
class _Running:
    thread_id: int
    deadline: float | None
    stopped: type[SlideStopped] | None = None


class SlideWatch:
    """The slides running in this process, each with an optional deadline. While open, a
    watcher thread stops every slide past its deadline; `interrupt_all` stops them all."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._running: dict[int, _Running] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()

    def __enter__(self) -> SlideWatch:
        if self.timeout_s is not None:
            self._watcher = threading.Thread(target=self._watch, name="slide-timeouts", daemon=True)
            self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join()

    @contextlib.contextmanager
    def running(self, index: int) -> Iterator[None]:
        """Register the calling thread as slide `index` while the block runs (after an
        interrupt, raise `SlideNotStarted` instead). An exception sent just as the block ends
        (not yet raised) is withdrawn: the slide finished."""
        ident = threading.get_ident()
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        with self._lock:
            if self._stopping.is_set():
                raise SlideNotStarted
            self._running[index] = _Running(ident, deadline)
        try:
            yield
        finally:
            with self._lock:
                entry = self._running.pop(index)
                if entry.stopped is not None:
                    _send(entry.thread_id, None)

    def started(self) -> set[int]:
        """Indexes of the slides running now."""
        with self._lock:
            return set(self._running)

    def interrupt_all(self) -> None:
        """Stop every running slide, and let no other start (the batch was interrupted)."""
        with self._lock:
            self._stopping.set()
            for entry in self._running.values():
                self._stop(entry, SlideInterrupted)

    def _watch(self) -> None:
        while not self._closed.wait(POLL_S):
            now = time.monotonic()
            with self._lock:
                for entry in self._running.values():
                    if entry.deadline is not None and now >= entry.deadline:
                        self._stop(entry, SlideTimedOut)

    @staticmethod
    def _stop(entry: _Running, exc: type[SlideStopped]) -> None:
        """Send `exc` once (a slide unwinding from one stop is not stopped again)."""
        if entry.stopped is None:
            entry.stopped = exc
            _send(entry.thread_id, exc)


def _send(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in thread `thread_id` at its next instruction (None: withdraw a pending one).

    Not while a thread is being started: CPython makes a new thread's state in the thread
    that starts it, with that thread's id, until the new thread runs, and gives the
    exception to the first state with the id, which is the newest. A stop sent then kills
    the new thread before it says it started, and the slide waits in `Thread.start` for
    ever. Threads being started are in `threading._limbo`; holding its lock keeps any from
    starting while the exception is sent (CPython's private names, checked on 3.11; an
    interpreter without them gets the stop at once, as before)."""
    lock = getattr(threading, "_active_limbo_lock", None)
    limbo = getattr(threading, "_limbo", None)
    if lock is None or limbo is None:
        _set_async_exc(thread_id, exc)
        return
    deadline = time.monotonic() + START_WAIT_S
    while True:
        with lock:
            if not limbo or time.monotonic() > deadline:
                _set_async_exc(thread_id, exc)
                return
        time.sleep(0.001)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in the thread (None: take back one not yet raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )
