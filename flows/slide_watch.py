"""Stopping a batch's slides from outside their threads: a per-slide time limit, and Ctrl-C.

A batch runs each slide in a thread of its process (`flows.batch_flow`). Each running slide
holds a `pipeline.cancellation.Cancellation`, handed down its stages as a value; a stop
cancels it with the stop's reason (`SlideTimedOut`, `SlideInterrupted`), and the slide's own
code raises that reason where it checks the token: within a fraction of a second wherever
it waits (the engine's watch of its parts, a Dask band's futures, between stages and the
steps of `prepare`), after the current step where it computes or sits in a C call. The
`finally` blocks on the way do the cleanup they do on any error: the slide's Dask bands are
told to stop (`band_runner.gather_all`), decoder processes end, the slide closes, and the
partial folder and lock are removed (`pipeline.outputs.output_dir.OutputDir`).

While a watch is open in the main thread, a stop's exception that Python drops is noted
(`dropped`): Python runs a signal handler between any two bytecodes, and what the handler
raises inside a finaliser (a weakref callback, a `__del__`) goes to `sys.unraisablehook`
instead of the code that runs, where the batch would otherwise go on to its end. The watch
notes there the KeyboardInterrupt of Ctrl-C, the `Terminated` of SIGHUP and the
`TerminationSignal` that Prefect's SIGTERM handler raises, and the batch's wait for its slides
raises it again (`raise_signalled`) and stops them as for any interrupt.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prefect.exceptions import TerminationSignal

from wsi_segment.errors import SlideInterrupted, SlideNotStarted, SlideTimedOut
from wsi_segment.pipeline.cancellation import POLL_S, Cancellation, CancelToken


@dataclass
class _Running:
    deadline: float | None
    cancellation: Cancellation = field(default_factory=Cancellation)


class SlideWatch:
    """The slides running in this process, each with its cancellation and an optional
    deadline. While open, a watcher thread cancels every slide past its deadline;
    `interrupt_all` cancels them all; in the main thread, a stop's exception that Python
    drops is noted (`dropped`, `raise_signalled`)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._running: dict[int, _Running] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._stopping = False
        self._hook: Callable[[Any], object] | None = None  # sys.unraisablehook before
        self.dropped: BaseException | None = None  # a stop's exception Python dropped

    def __enter__(self) -> SlideWatch:
        if self.timeout_s is not None:
            self._watcher = threading.Thread(target=self._watch, name="slide-timeouts", daemon=True)
            self._watcher.start()
        if threading.current_thread() is threading.main_thread():
            self._hook, sys.unraisablehook = sys.unraisablehook, self._note_dropped
        return self

    def __exit__(self, *exc: object) -> None:
        if self._hook is not None:
            sys.unraisablehook, self._hook = self._hook, None
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join()

    def raise_signalled(self) -> None:
        """Raise again the stop's exception that Python dropped, if it dropped one."""
        if self.dropped is not None:
            raise self.dropped

    def _note_dropped(self, unraisable: Any) -> None:
        """`sys.unraisablehook` while open: note the first stop's exception (a signal
        handler's), then report it as the hook before would (Python's: "Exception ignored
        in ..." on stderr). The note is an assignment: no lock, wherever the main thread is."""
        if self.dropped is None and isinstance(
            unraisable.exc_value, (KeyboardInterrupt, TerminationSignal)
        ):
            self.dropped = unraisable.exc_value
        (self._hook or sys.__unraisablehook__)(unraisable)

    @contextlib.contextmanager
    def running(self, index: int) -> Iterator[CancelToken]:
        """Slide `index` runs while the block does; the block gets its cancellation token
        (after an interrupt, raise `SlideNotStarted` instead)."""
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        entry = _Running(deadline)
        with self._lock:
            if self._stopping:
                raise SlideNotStarted
            self._running[index] = entry
        try:
            yield entry.cancellation
        finally:
            with self._lock:
                del self._running[index]

    def started(self) -> set[int]:
        """Indexes of the slides running now."""
        with self._lock:
            return set(self._running)

    def interrupt_all(self) -> None:
        """Stop every running slide, and let no other start (the batch was interrupted)."""
        with self._lock:
            self._stopping = True
            for entry in self._running.values():
                entry.cancellation.cancel(SlideInterrupted)

    def _watch(self) -> None:
        while not self._closed.wait(POLL_S):
            now = time.monotonic()
            with self._lock:
                for entry in self._running.values():
                    if entry.deadline is not None and now >= entry.deadline:
                        entry.cancellation.cancel(SlideTimedOut)
