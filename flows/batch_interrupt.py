"""Ctrl-C and SIGTERM during a batch: stop the slides in flight, clean up, report what finished.

The batch loop (`flows.batch_loop`) waits for its slides in the main thread, so the signal's
exception (KeyboardInterrupt, our `Terminated`; for SIGTERM in a Prefect flow, Prefect's own
handler raises `TerminationSignal`) arrives there while it waits. `wait_for_slides` waits in short steps (`POLL_S`):
Python runs handlers only in the main thread, but the kernel may deliver the signal to any
thread of the process, and then nothing wakes a main thread blocked in a wait without a
limit; the handler would run only when that slide ended. On the interrupt, every running
slide's cancellation token is cancelled (`flows.slide_watch`): each slide stops where its
code next checks it, removes its partial folder and lock and stops its chunks. The slides
are given `GRACE_S` to unwind, with further signals ignored meanwhile (a second Ctrl-C must
not cut the cleanup short; a slide still running after it, stuck in a call that does not
return, is named in a warning and not waited for: `flows.daemon_threads`); then the exception goes on, carrying every slide's result
(finished, "interrupted", or "not started"), so the CLI prints the table and one `error:`
line. A flow's Prefect still sees the interrupt (a `KeyboardInterrupt`, or a
`TerminationSignal` for its cancellation handling: `flows.batch_flow.BatchTerminated`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future

from wsi_segment.errors import TERMINATING_SIGNALS, SlideNotStarted, SlideStopped, SlideTimedOut
from wsi_segment.flows.signal_stop import stop_in_chain, stop_kinds
from wsi_segment.flows.slide_watch import SlideWatch
from wsi_segment.pipeline.batch_inputs import BatchItem
from wsi_segment.pipeline.cancellation import CancelToken
from wsi_segment.pipeline.segment import SlideResult
from wsi_segment.wsi.shown_path import shown_slide_path

GRACE_S = 30.0  # the most a batch waits for its interrupted slides to clean up
# the most a slide whose decoders passed on the group's signal waits for the batch's stop
GROUP_SIGNAL_WAIT_S = 5.0
POLL_S = 0.5  # the longest the main thread waits before it runs pending signal handlers
INTERRUPTED = "interrupted"
NOT_STARTED = "not started"
logger = logging.getLogger(__name__)


SlideFuture = Future[SlideResult]  # a slide's run in its thread (either door's)


class BatchStop:
    """What a stopped batch raises, whichever the stop: `results` holds every slide's result
    at that moment. It and its kinds live here, not in `wsi_segment.errors`: they carry the
    batch's `SlideResult`s, a pipeline type that module (imported by every layer, importing
    none) cannot name."""

    results: list[SlideResult]


class BatchInterrupted(BatchStop, KeyboardInterrupt):
    """Ctrl-C during a batch (SIGTERM and SIGHUP too, as its cause, outside a Prefect flow)."""

    def __init__(self, results: list[SlideResult]) -> None:
        super().__init__("interrupted")
        self.results = results


def wait_for_slides(
    futures: Mapping[int, SlideFuture],
    items: list[BatchItem],
    watch: SlideWatch,
    settled: Mapping[int, SlideResult],
) -> dict[int, SlideResult]:
    """Each submitted slide's result by index; on an interrupt, stop the slides and raise
    `BatchInterrupted` / `BatchTerminated` with the result of every item (`settled`: those
    decided without a task, e.g. up to date). Any other error of the wait (a fault of ours)
    also stops the running slides before it goes on: none runs on with nobody waiting."""
    try:
        return {i: slide_outcome(f, watch) for i, f in futures.items()}
    except stop_kinds() as exc:
        raise stopped_batch(exc, futures, items, watch, settled) from exc
    except Exception as exc:
        # a library caught the stop's exception while this thread waited and raised its own
        stop = stop_in_chain(exc, stop_kinds())
        if stop is None:
            with signals_ignored():
                stop_slides(futures, items, watch)
            raise
        # caused by the stop itself, as above: the CLI reads a SIGHUP's `Terminated` there
        raise stopped_batch(stop, futures, items, watch, settled) from stop


def stopped_batch(
    stop: BaseException,
    futures: Mapping[int, SlideFuture],
    items: list[BatchItem],
    watch: SlideWatch,
    settled: Mapping[int, SlideResult],
) -> BaseException:
    """The running slides stopped (further signals ignored meanwhile), and the batch's
    interrupt for `stop` with every item's result: `BatchInterrupted`, or for Prefect's
    `TerminationSignal` (only a flow's stop) the flow's `BatchTerminated`."""
    with signals_ignored():
        stopped = {**settled, **stop_slides(futures, items, watch)}
    results = [stopped[i] for i in range(len(items)) if i in stopped]
    if isinstance(stop, KeyboardInterrupt):
        return BatchInterrupted(results)
    from wsi_segment.flows.batch_flow import BatchTerminated

    return BatchTerminated(stop.signal, results)  # type: ignore[attr-defined]


def slide_outcome(future: SlideFuture, watch: SlideWatch) -> SlideResult:
    """The `SlideResult` of a slide task, waited for in short steps; a stop whose exception
    Python dropped (noted by the watch) is raised again, during the wait or at its end."""
    while not future.done():
        watch.raise_signalled()
        concurrent.futures.wait([future], timeout=POLL_S)
    watch.raise_signalled()
    return future.result()


def stop_slides(
    futures: Mapping[int, SlideFuture], items: list[BatchItem], watch: SlideWatch
) -> dict[int, SlideResult]:
    """Stop the running slides, wait up to GRACE_S for them to clean up, and return a result
    for every submitted slide, by index."""
    running = watch.started()
    watch.interrupt_all()
    deadline = time.monotonic() + GRACE_S
    for future in futures.values():
        # what ended a slide is read below; signals are ignored meanwhile (`signals_ignored`),
        # so whatever a wait raises is the slide's own
        with contextlib.suppress(BaseException):
            concurrent.futures.wait([future], timeout=max(0.0, deadline - time.monotonic()))
    return {i: _result_now(f, items[i], i in running) for i, f in futures.items()}


@contextlib.contextmanager
def group_signal_as_stop(cancel: CancelToken) -> Iterator[None]:
    """A slide's own stop for a Ctrl-C or SIGTERM that reaches its thread first through its
    decoder processes: a signal to the process group (a terminal, `timeout`, SLURM) also
    ends the decoders, which hand it on as their error. The batch's main thread got the same
    signal and is stopping the slides, so the slide waits (up to `GROUP_SIGNAL_WAIT_S`) for
    its token and raises that stop instead: the slide is reported `interrupted` and the
    batch's report is not cut short. Unstopped by then, the interrupt goes on."""
    try:
        yield
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            raise
        if not cancel.wait(GROUP_SIGNAL_WAIT_S):
            raise
        raise cancel.stop() from None


def stopped_result(
    item: BatchItem, exc: SlideStopped, timeout_s: float | None, seconds: float
) -> SlideResult:
    """The result of a slide stopped from outside: over its time limit (failed), cut off by
    an interrupt, or never started."""
    if isinstance(exc, SlideTimedOut):
        error = (
            f"{item.slide}: timed out after {timeout_s:g} s (the batch's slide time limit); "
            "its partial outputs were removed; run it again with a longer --slide-timeout"
        )
        return SlideResult(item.slide, "failed", None, {}, error, seconds)
    status = NOT_STARTED if isinstance(exc, SlideNotStarted) else INTERRUPTED  # SlideInterrupted
    return SlideResult(item.slide, status, None, {}, f"{status} (batch interrupted)", seconds)


def _result_now(future: SlideFuture, item: BatchItem, was_running: bool) -> SlideResult:
    """The slide's own result if its task has returned, else one saying it was cut off (a
    slide still running now is stuck in a call that does not return: it ends with the
    process, as if killed, so its partial folder and lock may stay for the next run)."""
    still_running = False
    try:
        return future.result(timeout=0)
    except TimeoutError:
        still_running = was_running
    except BaseException:  # crashed (an interrupt of its own included): reported as cut off
        pass
    status = INTERRUPTED if was_running else NOT_STARTED
    error = f"{status} (batch interrupted)"
    if still_running:
        error = (
            f"{shown_slide_path(item.slide)}: still running {GRACE_S:g} s after the interrupt; "
            "it ends with the process, as if killed (a rerun takes over its partial folder and "
            "lock)"
        )
        logger.warning("%s", error)
    return SlideResult(item.slide, status, None, {}, error, 0.0)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP are ignored while the block runs (main thread only:
    elsewhere signals cannot be set and are not delivered anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ignored = (signal.SIGINT, *TERMINATING_SIGNALS)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in ignored}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
