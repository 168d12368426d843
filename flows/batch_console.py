"""What `wsi-segment batch` shows on the terminal: one line per failed slide, one interrupt.

The batch CLI prints an `error: <slide>: <reason>` line for each failed slide itself (and a
`warning:` line for each slide warning and known failure, so it drops the run loggers' records
marked `REPORT_LINE` too), so on the console it drops what Prefect's run loggers log at ERROR (a stage task's "Finished in
state Failed", the flow's "failed:" lines and its BatchFailedError traceback, "Crash
detected!" after an interrupt, an unexpected error's traceback): each would repeat a slide's
failure in other words. Only the console is filtered: the Prefect server still receives every
record (its API handler sits on the run loggers, not on the console). Dask's INFO chatter
(workers starting and stopping) is dropped from the console too, and with `--quiet` Prefect's
INFO lines as well: what is left is warnings, the table and its `error:` lines.

`--quiet` also drops Dask's warning that a TLS handshake on one of the local cluster's
listeners ended because the peer closed it (`abandoned_handshake`). Dask's `connect` gives
its first attempt a fifth of its connect timeout (6 s of 30 s) and, when that runs out,
drops the half-made connection and connects again. On a loaded machine the batch's own
process (scheduler, nanny, Prefect flow) can be held that long, so a peer that connects
meanwhile (e.g. the client a band's abort event opens on its worker, refreshing what it
knows of the scheduler) gives up its first handshake, and the scheduler's listener, once it
runs again, reads the closed socket: "EOF occurred in violation of protocol", or
"Connection reset by peer" if its reply went unread. The retry connects, and the batch goes
on unharmed. A handshake that failed for another reason (a peer without our certificate)
is kept.

`InterruptGuard`: the first Ctrl-C or SIGTERM interrupts the batch; later ones are ignored
until the command has cleaned up and printed what finished, so a second Ctrl-C cannot cut the
cleanup short or leave a half-reported run. While a flow runs, Prefect's own SIGTERM handler
raises its `TerminationSignal`, and on the way out Prefect sends SIGTERM again to the handler
it replaced (ours) so that it runs too: arriving while that exception is handled, it is the
same termination, not a second one.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from wsi_segment.errors import handled_signals, restore_handlers, signal_exception
from wsi_segment.flows.dropped_stops import DroppedStops
from wsi_segment.flows.signal_stop import stop_kinds

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# A log record with this attribute set (`extra=REPORT_LINE`) says what the CLI prints itself
# as a `warning:` line (a slide's warnings, a known failure): not repeated on the console.
REPORT_LINE = {"wsi_segment_report_line": True}
# Where Dask logs a TLS handshake that failed on one of its listeners, and how a peer that
# closed it mid-handshake reads there (the error is the record's last argument).
DASK_LOGGER = "distributed"
DASK_TCP_LOGGER = "distributed.comm.tcp"
PEER_CLOSED = (ssl.SSLEOFError, ConnectionResetError)


def abandoned_handshake(record: logging.LogRecord) -> bool:
    """Dask's warning that a peer closed a connection to one of its TLS listeners before the
    handshake ended: what a `connect` whose first attempt timed out leaves behind."""
    if record.name != DASK_TCP_LOGGER or not isinstance(record.args, tuple) or not record.args:
        return False
    message = record.getMessage()
    return (
        message.startswith("Listener on ")
        and "TLS handshake failed" in message
        and isinstance(record.args[-1], PEER_CLOSED)
    )


class BatchConsoleFilter(logging.Filter):
    """Drops run-logger errors (the CLI reports each failed slide once), the warnings the CLI
    prints itself (`REPORT_LINE`) and Dask's INFO;
    `quiet` (`--quiet`) drops Prefect's INFO too (a flow's start, each task's "Finished
    in state Completed()"), keeping its warnings, and Dask's
    warnings of handshakes its own retries abandoned (`abandoned_handshake`)."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__()
        self.quiet = quiet
        self.chatter = ("distributed", "prefect") if quiet else ("distributed",)

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if record.levelno >= logging.ERROR and name.startswith(RUN_LOGGERS):
            return False
        if getattr(record, "wsi_segment_report_line", False):
            return False
        if self.quiet and abandoned_handshake(record):
            return False
        return not (record.levelno < logging.WARNING and name.startswith(self.chatter))


@contextmanager
def quiet_console(quiet: bool = False) -> Iterator[None]:
    """`BatchConsoleFilter` on the console handlers there are when the block starts (the
    root logger's, Prefect's and Dask's own: Dask prints through a handler of its
    `distributed` logger) while it runs. Prefect's appear when Prefect is imported: the
    flow's door enters this again once it has imported it."""
    handlers: list[logging.Handler] = []
    for name in ("", "prefect", DASK_LOGGER):
        handlers += [h for h in logging.getLogger(name).handlers if h not in handlers]
    console_filter = BatchConsoleFilter(quiet)
    for handler in handlers:
        handler.addFilter(console_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(console_filter)


def cli_stop(stop: BaseException) -> KeyboardInterrupt:
    """What the CLI reports for a stop (one of `stop_kinds`): a KeyboardInterrupt (Ctrl-C,
    our `Terminated`) as it is; Prefect's `TerminationSignal` (its SIGTERM handler's, during
    a flow) as our `Terminated` of that signal (exit 143)."""
    if isinstance(stop, KeyboardInterrupt):
        return stop
    return signal_exception(stop.signal)  # type: ignore[attr-defined]


class InterruptGuard:
    """While entered (main thread only): the first SIGINT raises KeyboardInterrupt and the
    first SIGTERM or SIGHUP `Terminated`; once any has come (or `hold` was called), all are
    ignored. One the process inherited as ignored stays ignored (`nohup`'s SIGHUP). The
    previous handlers come back on exit."""

    def __init__(self) -> None:
        self.fired = False
        self.signum: int | None = None  # the signal that fired it (None: none, or `hold`)
        self._previous: dict[int, Any] = {}
        self._dropped = DroppedStops()  # Prefect's SIGTERM too, whose handler is not ours

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = handled_signals(self._handle)
        self._dropped.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._dropped.__exit__(*exc)
        restore_handlers(self._previous)

    def hold(self) -> None:
        """Ignore every later signal (an interrupt has come by another way)."""
        self.fired = True

    def unraised(self) -> KeyboardInterrupt | None:
        """The exception of the signal that fired the guard, or of a stop whose exception
        Python dropped while it was entered (Prefect's `TerminationSignal` included), for a
        batch that ended without it: Python drops an exception a handler raises inside a
        finaliser (the batch's wait for its slides raises it again, `flows.slide_watch`;
        elsewhere, the batch went on). None if neither came."""
        if self.signum is not None:
            return signal_exception(self.signum)
        stop = self._dropped.stop
        return None if stop is None else cli_stop(stop)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:
            return
        self.fired = True
        if isinstance(sys.exc_info()[1], stop_kinds()[1:]):  # Prefect's, once it is loaded
            return  # Prefect passing on the SIGTERM it has already raised as TerminationSignal
        self.signum = signum
        raise signal_exception(signum)
