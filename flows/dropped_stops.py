"""Stops whose exception Python drops: a signal's exception raised inside a finaliser.

Python runs a signal handler in the main thread between any two bytecodes. What the handler
raises there (Ctrl-C's KeyboardInterrupt, our `Terminated` for SIGTERM and SIGHUP, the
`TerminationSignal` Prefect's own SIGTERM handler raises while a flow runs) inside a
finaliser (a weakref callback, a `__del__`) never reaches the code that was running: Python
prints "Exception ignored in ..." and hands it to `sys.unraisablehook`, and a batch would go
on to its end. `DroppedStops` is that hook while it is open and keeps a fresh copy of the
first such stop, for the code that waits to raise it again; `on_stop` lets a run in the
main thread itself cancel its token then, so the stop lands at its next check
(`stop_on_dropped`: a slide flow, training).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeAlias, cast

from wsi_segment.errors import SlideInterrupted, SlideStopped, Terminated, signal_exception
from wsi_segment.flows.signal_stop import stop_kinds
from wsi_segment.pipeline.cancellation import Cancellation

if TYPE_CHECKING:  # Prefect is loaded where its stop can come (`stop_kinds`), not for this
    from prefect.exceptions import TerminationSignal

    Stop: TypeAlias = KeyboardInterrupt | TerminationSignal


class DroppedStops:
    """While open in the main thread: Python's unraisable hook, noting the first stop's
    exception dropped in the main thread (where signal handlers run; a drop in another
    thread is that thread's own), then handing every report on to the hook before it."""

    def __init__(self, on_stop: Callable[[], object] | None = None) -> None:
        """`on_stop`: called once, when the first stop is noted, from the hook, wherever the
        main thread was: it must take no lock (`Cancellation.note`)."""
        self.stop: Stop | None = None  # a fresh copy: no frames of the finaliser kept alive
        self._on_stop = on_stop
        self._before: Callable[[sys.UnraisableHookArgs], object] | None = None

    def __enter__(self) -> DroppedStops:
        if threading.current_thread() is threading.main_thread():
            self._before, sys.unraisablehook = sys.unraisablehook, self._note
        return self

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            if sys.unraisablehook == self._note:  # else a hook set after ours stays
                sys.unraisablehook = self._before
            self._before = None

    def raise_noted(self) -> None:
        """Raise the stop Python dropped, if it dropped one."""
        if self.stop is not None:
            raise self.stop

    def _note(self, unraisable: sys.UnraisableHookArgs) -> None:
        """The hook: an assignment (and `on_stop`), no lock of its own (it runs wherever the
        main thread was)."""
        dropped = unraisable.exc_value
        if (
            self.stop is None
            and isinstance(dropped, stop_kinds())
            and threading.current_thread() is threading.main_thread()
        ):
            self.stop = _fresh(dropped)
            if self._on_stop is not None:
                self._on_stop()
        (self._before or sys.__unraisablehook__)(unraisable)


@contextlib.contextmanager
def stop_on_dropped() -> Iterator[Cancellation]:
    """A cancellation token for a run in the main thread, cancelled when Python drops a stop
    there: the run raises its `SlideStopped` at its next check, and the stop itself is raised
    in its place, as if Python had not dropped it (the run does not go on to its end)."""
    stop = Cancellation()
    with DroppedStops(lambda: stop.note(SlideInterrupted)) as dropped:
        try:
            yield stop
        except SlideStopped:
            dropped.raise_noted()
            raise


def _fresh(stop: BaseException) -> Stop:
    """A new exception of the same stop (a `stop_kinds` one), without the dropped one's
    traceback."""
    if isinstance(stop, Terminated):
        return signal_exception(stop.signum)
    if isinstance(stop, KeyboardInterrupt):
        return KeyboardInterrupt()
    termination = stop_kinds()[-1]  # Prefect's TerminationSignal (not a subclass of it)
    return cast("Stop", termination(stop.signal))  # type: ignore[attr-defined]
