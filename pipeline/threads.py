"""Threads whose end can be waited for through Ctrl-C.

CPython 3.11's `threading.Thread.join`, when a signal handler's exception (Ctrl-C's
KeyboardInterrupt, our SIGTERM's `Terminated`) lands during the wait, marks a thread that
still runs as ended: `threading.Thread.is_alive` turns False and every later join returns at
once. Cleanup that joins again after an interrupt would then go on (close the slide, remove
the work folder) while the thread still reads or writes. `WaitableThread` signals its end
with an `Event`, whose waits an interrupt leaves intact, so the cleanup's wait can simply be
retried.

Two waits go on through interrupts, for two situations:
- `Background.result_through_interrupts`: work that must not stop half way (zarr writes).
  The first interrupt is kept and raised once the work has ended: the run still stops.
- `pipeline.inference.engine_state.wait_uninterrupted`: waits inside a cleanup that is
  already handling a stop. A further Ctrl-C or SIGTERM (KeyboardInterrupt) is dropped, since
  the stop is under way; any other BaseException is handed back for the caller to raise
  after its cleanup.

One wait is bounded: a thread reading a remote slide (`stop_wait_s`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar, TypeVarTuple

from wsi_segment.wsi.shown_path import is_remote_url

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

START_WAIT_S = 1.0  # how long a thread whose start an interrupt cut short may take to begin
STOP_WAIT_S = 2.0  # how long a closing reader waits for a thread in a remote read (`stop_wait_s`)


def stop_wait_s(slide_path: str) -> float | None:
    """How long closing a background reader of `slide_path` waits for its thread (None: until
    it ends). A remote store's read cannot be interrupted and lasts up to the store's
    timeouts (`wsi.slide_path`: a minute a request, three attempts): a stop (Ctrl-C, a
    scheduler's SIGTERM) would wait minutes on a hung server, past a scheduler's grace
    period. Such a thread reads with a handle of its own, which it closes, and hands on
    nothing once closed, so after STOP_WAIT_S it is left, a daemon, to end with its read.
    A local read ends in moments and is waited for: a process that exits while openslide's
    C code runs in a thread may crash."""
    return STOP_WAIT_S if is_remote_url(slide_path) else None


class WaitableThread:
    """A daemon thread running `target(*args)`; `wait` is safe to interrupt and retry."""

    def __init__(
        self, target: Callable[..., Any], args: tuple[Any, ...] = (), name: str | None = None
    ) -> None:
        self._began = threading.Event()
        self._ended = threading.Event()
        self._started = False  # `start` returned: the thread has begun or surely will
        self.thread = threading.Thread(
            target=self._run, args=(target, args), name=name, daemon=True
        )

    def _run(self, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._began.set()
        try:
            target(*args)
        finally:
            self._ended.set()

    def start(self) -> None:
        self.thread.start()
        self._started = True

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s (None: until it ends); whether it has ended. One whose
        `start` an interrupt cut short may never run: if it has not begun within
        START_WAIT_S it counts as ended."""
        if not self._started and not self._began.wait(START_WAIT_S):
            return True
        return self._ended.wait(timeout)


class Background(Generic[T]):
    """Run a function in a daemon thread; `result()` waits for it and re-raises its error."""

    def __init__(self, fn: Callable[[*Ts], T], *args: *Ts) -> None:
        self._result: list[T] = []  # the value, once the thread has returned one
        self._error: BaseException | None = None
        self.seconds = 0.0

        def target() -> None:
            t0 = time.perf_counter()
            try:
                self._result.append(fn(*args))
            except BaseException as exc:  # handed to the caller of result()
                self._error = exc
            self.seconds = time.perf_counter() - t0

        self._thread = WaitableThread(target, name=getattr(fn, "__name__", "bg"))
        self._thread.start()

    def done(self) -> bool:
        """Whether the function has returned or raised."""
        return self._thread.ended

    def wait(self, timeout: float | None) -> bool:
        """Wait up to `timeout` s (None: until it ends) without taking the result; whether
        the function has ended."""
        return self._thread.wait(timeout)

    def result(self) -> T:
        self._thread.wait()
        if self._error is not None:
            raise self._error
        return self._result[0]

    def result_through_interrupts(self) -> T:
        """The result, waiting for the thread to end even when this thread is interrupted
        meanwhile (Ctrl-C, SIGTERM), which is raised once it has. For writes that must not
        stop half way: zarr goes on writing in its own thread after its caller is
        interrupted, into a folder the interrupt's cleanup would already have removed."""
        interrupt: BaseException | None = None
        while True:
            try:
                self._thread.wait()
                break
            except BaseException as exc:
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt
        return self.result()
