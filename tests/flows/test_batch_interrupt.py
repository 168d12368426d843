"""wait_for_slides with a real future over a real thread, and real SIGTERMs sent to a
thread other than the main one (the kernel may deliver a process's signal to any of its
threads; Python still runs the handler in the main thread, which must not be stuck in a wait
without a limit).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydantic
import pydantic_core
import pytest
from prefect.exceptions import TerminationSignal

from tests.conftest import foreground_signals
from wsi_segment.errors import SlideInterrupted, SlideStopped, Terminated
from wsi_segment.flows import batch_interrupt
from wsi_segment.flows.batch_flow import BatchTerminated
from wsi_segment.flows.batch_interrupt import (
    INTERRUPTED,
    BatchInterrupted,
    group_signal_as_stop,
    stopped_result,
    wait_for_slides,
)
from wsi_segment.flows.cli import NotedSignals
from wsi_segment.flows.slide_watch import SlideWatch
from wsi_segment.pipeline.batch_inputs import BatchItem
from wsi_segment.pipeline.segment import SlideResult

BACKSTOP_S = 60.0  # the slide ends by itself after this: an interrupt that waits for it failed


def polling_slide(watch: SlideWatch, item: BatchItem, idents: list[int]) -> SlideResult:
    """A slide whose waits check its token, as the pipeline's do, until stopped or the
    backstop."""
    idents.append(threading.get_ident())
    t0 = time.monotonic()
    try:
        with watch.running(0) as cancel:
            while time.monotonic() - t0 < BACKSTOP_S:
                cancel.check()
                cancel.wait(0.01)
            return SlideResult(str(item.slide), "done", None, {}, None, time.monotonic() - t0)
    except SlideStopped as exc:
        return stopped_result(item, exc, None, time.monotonic() - t0)


def started_slide(
    pool: ThreadPoolExecutor, watch: SlideWatch, item: BatchItem, idents: list[int]
) -> concurrent.futures.Future[SlideResult]:
    """`polling_slide` as a batch runs it (in a thread of its pool), once it started."""
    future = pool.submit(polling_slide, watch, item, idents)
    while watch.started() != {0}:
        time.sleep(0.01)
    return future


@pytest.mark.timeout(2 * BACKSTOP_S)
def test_a_sigterm_delivered_to_a_slide_thread_interrupts_the_batch(tmp_path: Path) -> None:
    """SIGTERM lands in the slide's thread while the main thread waits for that slide: the
    batch is interrupted and the slide stopped (not finished first, as an unbounded wait of
    the main thread would have it)."""
    item = BatchItem(str(tmp_path / "a.svs"), None, "a")
    idents: list[int] = []
    with ThreadPoolExecutor(1) as pool, SlideWatch(None) as watch:
        future = started_slide(pool, watch, item, idents)
        with NotedSignals(), pytest.raises(BatchInterrupted) as info:
            threading.Timer(0.3, signal.pthread_kill, (idents[0], signal.SIGTERM)).start()
            wait_for_slides({0: future}, [item], watch, {})
    (result,) = info.value.results
    assert result.status == INTERRUPTED, result


class StopWhileFinalised:
    """An object whose finaliser raises `stop`, as a signal's handler does when the signal
    lands inside a finaliser: Python prints it and drops it. (Real signals landing there are
    sent in a fresh interpreter: tests/flows/test_batch_console.py.)"""

    def __init__(self, stop: BaseException) -> None:
        self.stop = stop

    def __del__(self) -> None:
        raise self.stop


@pytest.mark.timeout(2 * BACKSTOP_S)
@pytest.mark.parametrize(
    ("stop", "stopped"),
    [(KeyboardInterrupt(), BatchInterrupted), (TerminationSignal(signal.SIGTERM), BatchTerminated)],
    ids=["ctrl-c", "prefect-sigterm"],
)
def test_a_stop_whose_exception_python_drops_still_interrupts_the_batch(
    tmp_path: Path, stop: BaseException, stopped: type[BaseException]
) -> None:
    """Python drops the exception a handler raises inside a finaliser (Ctrl-C's
    KeyboardInterrupt; SIGTERM's `TerminationSignal`, which Prefect's own handler raises
    while a flow runs); the batch went on to its end. The watch noted it, and the wait for
    the slides raises it again: the batch is stopped and its running slide reported
    `interrupted`, as for any Ctrl-C or SIGTERM."""
    item = BatchItem(str(tmp_path / "a.svs"), None, "a")
    idents: list[int] = []
    dropped: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = dropped.append  # what Python does with an exception in a finaliser
    try:
        with ThreadPoolExecutor(1) as pool, SlideWatch(None) as watch:
            future = started_slide(pool, watch, item, idents)
            StopWhileFinalised(stop)  # finalised at once
            assert [d.exc_value for d in dropped] == [stop]
            assert type(watch.dropped.stop) is type(stop) and watch.dropped.stop is not stop
            with pytest.raises(stopped) as info:
                wait_for_slides({0: future}, [item], watch, {})
        assert sys.unraisablehook == dropped.append  # given back
    finally:
        sys.unraisablehook = hook
    (result,) = info.value.results
    assert result.status == INTERRUPTED, result


def test_a_stop_dropped_as_the_last_slide_ends_still_stops_the_batch(tmp_path: Path) -> None:
    """The drop lands during the last step of the wait for a slide that then ends: the
    wait raises it at its end, rather than the batch going on."""
    item = BatchItem(str(tmp_path / "a.svs"), None, "a")
    done = SlideResult(str(item.slide), "done", None, {}, None, 0.0)
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None  # the watch hands it on: nothing printed
    try:
        with ThreadPoolExecutor(1) as pool, SlideWatch(None) as watch:
            future = pool.submit(lambda: done)
            concurrent.futures.wait([future])
            StopWhileFinalised(KeyboardInterrupt())
            with pytest.raises(BatchInterrupted) as info:
                wait_for_slides({0: future}, [item], watch, {})
    finally:
        sys.unraisablehook = hook
    (result,) = info.value.results
    assert result.status == "done", result


def slide_whose_decoder_was_signalled(cancel, caught: dict) -> None:
    """A slide thread in which a decoder process's `Terminated` arrives (the process
    group's SIGTERM reached the decoder first), as the engine raises it."""
    try:
        with group_signal_as_stop(cancel):
            raise Terminated("terminated by signal 15", signal.SIGTERM)
    except BaseException as exc:
        caught["exc"] = exc
        caught["at"] = time.monotonic()


def test_a_slide_whose_decoders_got_the_groups_signal_ends_with_the_batchs_stop() -> None:
    """The batch's main thread got the same signal and cancels the slide's token a moment
    later: the slide raises that stop (reported `interrupted`), not the decoder's
    `Terminated`, which would cut the batch's report short."""
    caught: dict = {}
    with SlideWatch(None) as watch, watch.running(0) as cancel:
        thread = threading.Thread(target=slide_whose_decoder_was_signalled, args=(cancel, caught))
        thread.start()
        time.sleep(0.3)
        interrupted_at = time.monotonic()
        watch.interrupt_all()
        thread.join(timeout=10)
    assert isinstance(caught["exc"], SlideInterrupted)
    assert caught["at"] - interrupted_at < 0.5


def test_a_decoders_signal_the_batch_never_got_goes_on_after_the_wait(monkeypatch) -> None:
    monkeypatch.setattr(batch_interrupt, "GROUP_SIGNAL_WAIT_S", 0.3)
    caught: dict = {}
    t0 = time.monotonic()
    with SlideWatch(None) as watch, watch.running(0) as cancel:
        thread = threading.Thread(target=slide_whose_decoder_was_signalled, args=(cancel, caught))
        thread.start()
        thread.join(timeout=10)
    assert isinstance(caught["exc"], Terminated)
    assert 0.3 <= caught["at"] - t0 < 2.0


class Signalled(pydantic.BaseModel):
    """A model whose serializer is where a signal lands: pydantic-core raises its own
    `PydanticSerializationError`, the signal's exception kept as its cause."""

    signum: int

    @pydantic.field_serializer("signum")
    def signalled(self, signum: int) -> int:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises here, inside the serializer
        return signum


class FirstWaitCalls(concurrent.futures.Future[SlideResult]):
    """A slide's real future, as the batch waits on it, whose first look (`done`) calls
    `first` (a library call of the batch's wait, where a signal lands, or a fault of the
    wait's own); it ends as that future does."""

    def __init__(self, future: concurrent.futures.Future[Any], first: Callable[[], object]) -> None:
        super().__init__()
        self.first, self.fired = first, False
        future.add_done_callback(self._copy)

    def _copy(self, ended: concurrent.futures.Future[Any]) -> None:
        error = ended.exception()
        if error is None:
            self.set_result(ended.result())
        else:
            self.set_exception(error)

    def done(self) -> bool:
        if not self.fired:
            self.fired = True
            self.first()
        return super().done()


@pytest.mark.timeout(2 * BACKSTOP_S)
@pytest.mark.parametrize(
    ("handler", "stopped"),
    [("ours", BatchInterrupted), ("prefect", BatchTerminated)],
    ids=["ctrl-c", "prefect-sigterm"],
)
def test_a_stop_a_library_rewords_during_the_wait_still_stops_the_slides(
    tmp_path: Path, handler: str, stopped: type[BaseException]
) -> None:
    """A signal landing in a library call of the batch's wait (pydantic-core turns the
    handler's exception into its own error) stops the running slides and the batch as the
    stop itself would, rather than leaving them running while that error goes on."""
    item = BatchItem(str(tmp_path / "a.svs"), None, "a")
    idents: list[int] = []

    def raise_termination(signum: int, _frame: object) -> None:  # Prefect's, while a flow runs
        raise TerminationSignal(signal=signum)

    signum = signal.SIGINT if handler == "ours" else signal.SIGTERM
    # foreground: CI may run the tests with SIGINT ignored, which the CLI's handlers keep
    with (
        foreground_signals(),
        NotedSignals(),
        ThreadPoolExecutor(1) as pool,
        SlideWatch(None) as watch,
    ):
        if handler == "prefect":
            signal.signal(signal.SIGTERM, raise_termination)
        future = started_slide(pool, watch, item, idents)
        with pytest.raises(stopped) as info:
            serializing = FirstWaitCalls(future, Signalled(signum=signum).model_dump)
            wait_for_slides({0: serializing}, [item], watch, {})
    cause = info.value.__cause__  # the stop itself (the CLI reads a SIGHUP's exit status there)
    assert isinstance(cause, KeyboardInterrupt if handler == "ours" else TerminationSignal)
    reworded = info.value.__context__  # what pydantic raised, with the stop behind it
    assert isinstance(reworded, pydantic_core.PydanticSerializationError)
    assert (reworded.__cause__ or reworded.__context__) is cause
    (result,) = info.value.results
    assert result.status == INTERRUPTED, result


def fault_in_the_wait() -> None:
    raise RuntimeError("a fault in the wait")


@pytest.mark.timeout(2 * BACKSTOP_S)
def test_a_fault_in_the_wait_stops_the_running_slides_before_it_goes_on(tmp_path: Path) -> None:
    """An error of the batch's wait with no stop behind it goes on as it is, and the running
    slides are stopped first: they used to run on, to their end, with nobody waiting."""
    item = BatchItem(str(tmp_path / "a.svs"), None, "a")
    idents: list[int] = []
    with ThreadPoolExecutor(1) as pool, SlideWatch(None) as watch:
        future = started_slide(pool, watch, item, idents)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="a fault in the wait"):
            wait_for_slides({0: FirstWaitCalls(future, fault_in_the_wait)}, [item], watch, {})
        assert future.done()  # stopped, not left running
        assert time.monotonic() - t0 < BACKSTOP_S / 2
        assert future.result().status == INTERRUPTED
