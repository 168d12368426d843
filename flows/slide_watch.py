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

While a watch is open in the main thread, a stop's exception that Python drops (a signal
handler's, raised inside a finaliser: `flows.dropped_stops`) is noted, where the batch would
otherwise go on to its end; the batch's wait for its slides raises it again
(`raise_signalled`) and stops them as for any interrupt.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from wsi_segment.errors import SlideInterrupted, SlideNotStarted, SlideTimedOut
from wsi_segment.flows.dropped_stops import DroppedStops
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
        self.dropped = DroppedStops()

    def __enter__(self) -> SlideWatch:
        if self.timeout_s is not None:
            self._watcher = threading.Thread(target=self._watch, name="slide-timeouts", daemon=True)
            self._watcher.start()
        self.dropped.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.dropped.__exit__(*exc)
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join()

    def raise_signalled(self) -> None:
        """Raise again the stop's exception that Python dropped, if it dropped one."""
        self.dropped.raise_noted()

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
