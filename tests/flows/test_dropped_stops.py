"""flows.dropped_stops: what Python drops in a finaliser is noted only where a signal's
handler raises (the main thread), as a fresh stop, and the hook before is handed back."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import pytest
from prefect.exceptions import TerminationSignal

from wsi_segment.errors import Terminated
from wsi_segment.flows.dropped_stops import DroppedStops


class RaisesWhenFinalised:
    """Raises `exc` from its finaliser: Python prints it and drops it (the unraisable hook)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __del__(self) -> None:
        raise self.exc


@pytest.fixture
def reports() -> Any:
    """The reports that reach the hook in place before a test's DroppedStops."""
    seen: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = seen.append
    yield seen
    sys.unraisablehook = hook


@pytest.mark.parametrize(
    "stop",
    [KeyboardInterrupt(), Terminated.by(signal.SIGHUP), TerminationSignal(signal.SIGTERM)],
    ids=["ctrl-c", "sighup", "prefect-sigterm"],
)
def test_the_first_stop_dropped_is_kept_fresh_and_every_report_handed_on(
    reports: list[Any], stop: BaseException
) -> None:
    with DroppedStops() as dropped:
        RaisesWhenFinalised(ValueError("not a stop"))
        RaisesWhenFinalised(stop)
        RaisesWhenFinalised(KeyboardInterrupt())  # a second stop: the first is kept
    assert [type(r.exc_value) for r in reports] == [ValueError, type(stop), KeyboardInterrupt]
    assert reports[1].exc_value is stop
    noted = dropped.stop
    assert type(noted) is type(stop) and noted is not stop and noted.__traceback__ is None
    assert getattr(noted, "signum", None) == getattr(stop, "signum", None)
    assert getattr(noted, "signal", None) == getattr(stop, "signal", None)
    with pytest.raises(type(stop)):
        dropped.raise_noted()


def test_a_stop_dropped_in_another_thread_is_that_thread_s(reports: list[Any]) -> None:
    """Signal handlers run in the main thread only: a KeyboardInterrupt dropped in a slide
    thread is reported as before, and stops nothing."""
    told: list[str] = []
    with DroppedStops(lambda: told.append("stop")) as dropped:
        thread = threading.Thread(target=lambda: RaisesWhenFinalised(KeyboardInterrupt()))
        thread.start()
        thread.join()
        dropped.raise_noted()  # nothing to raise
    assert dropped.stop is None and len(reports) == 1 and told == []


def test_on_stop_is_told_of_the_first_stop_only(reports: list[Any]) -> None:
    """A run in the main thread cancels its token from `on_stop` (flows.slide_flow): once,
    for the first stop noted, never for another error."""
    told: list[object] = []
    with DroppedStops(lambda: told.append(dropped.stop)) as dropped:
        RaisesWhenFinalised(ValueError("not a stop"))
        assert told == []
        RaisesWhenFinalised(KeyboardInterrupt())
        RaisesWhenFinalised(TerminationSignal(signal.SIGTERM))
    assert len(told) == 1 and type(told[0]) is KeyboardInterrupt and told[0] is dropped.stop
    assert len(reports) == 3


def test_the_hook_before_comes_back_unless_another_was_set_since(reports: list[Any]) -> None:
    with DroppedStops():
        assert sys.unraisablehook != reports.append
    assert sys.unraisablehook == reports.append
    later: list[Any] = []
    with DroppedStops():
        sys.unraisablehook = later.append  # set by other code while it was open
    assert sys.unraisablehook == later.append


def test_outside_the_main_thread_it_installs_nothing(reports: list[Any]) -> None:
    seen: list[object] = []

    def open_one() -> None:
        with DroppedStops():
            seen.append(sys.unraisablehook)

    thread = threading.Thread(target=open_one)
    thread.start()
    thread.join()
    assert seen == [reports.append]
