"""Stopping a slide's run (or a training) from outside: a cancellation token its loops check.

A batch stops a slide (its time limit, Ctrl-C, SIGTERM, SIGHUP: `flows.slide_watch`) by
cancelling the slide's `Cancellation`, with the stop as its reason (a `SlideStopped`
subclass of `wsi_segment.errors`). The slide's code is handed the token as a value and checks
it where it already waits in bounded steps (the engine's watch of its parts, a Dask band's
futures, between the stages and the steps of `prepare`); there `check` raises the reason,
and the `finally` blocks on the way clean up as on any error. Nothing is injected into a
thread from outside, so a stop lands only where the code can take it. Training checks the
same token before each step (`flows.dropped_stops.stop_on_dropped`, for a stop Python drops;
its `SlideInterrupted` reason never leaves the guard, which raises the dropped stop itself).

`CancelToken` is what the slide path reads; `NEVER_CANCELLED` is the token of a run that
nothing outside stops (the single-slide CLI, whose Ctrl-C is the main thread's own).
"""

from __future__ import annotations

import threading
import time
from typing import Final

from wsi_segment.errors import SlideStopped

POLL_S = 0.1  # how often a wait that polls looks at its token


class CancelToken:
    """The read side of a cancellation; this base is one nothing can cancel."""

    @property
    def reason(self) -> type[SlideStopped] | None:
        """The stop asked for (None: not cancelled)."""
        return None

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def stop(self) -> SlideStopped:
        """The exception of the stop asked for (only once cancelled)."""
        reason = self.reason
        if reason is None:
            raise ValueError("the run was not cancelled")
        return reason()

    def check(self) -> None:
        """Raise the stop if the run was cancelled."""
        if self.cancelled:
            raise self.stop()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds, less once cancelled; whether it was cancelled."""
        time.sleep(timeout)
        return False


class Cancellation(CancelToken):
    """A token that its owner (the batch's slide watch, a Dask band's abort watch) cancels
    once, with a reason; the first reason stays."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason: type[SlideStopped] | None = None

    @property
    def reason(self) -> type[SlideStopped] | None:
        return self._reason

    def cancel(self, reason: type[SlideStopped]) -> bool:
        """Ask the run to stop for `reason`; False if it was already asked (a slide
        unwinding from one stop is not stopped again for another reason)."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
        self._event.set()
        return True

    def note(self, reason: type[SlideStopped]) -> None:
        """`cancel` without taking a lock, for a handler that runs wherever its thread was (a
        signal's, Python's unraisable hook), maybe while that thread holds this token's
        locks (inside `wait`): checks see it at once, a `wait` at its timeout at the latest."""
        if self._reason is None:
            self._reason = reason

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout) or self.cancelled


NEVER_CANCELLED: Final = CancelToken()
