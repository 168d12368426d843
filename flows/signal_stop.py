"""The CLI's stop on a signal, made to land even where Python drops the signal's exception.

Python runs a signal's handler in the main thread between two bytecodes, wherever those are.
The exception it raises (KeyboardInterrupt for Ctrl-C, `Terminated` for SIGTERM and SIGHUP)
may so be raised inside a finaliser (a weakref callback, a `__del__`), where Python prints
"Exception ignored" and drops it: the run then went on to the end and exited 0 (seen under
CI: a SIGTERM raised in the import system's module-lock callback). So the handler also
cancels the run's token; the stop then lands at the run's next check (the engine's watch of
its parts, every 0.1 s; between the stages and `prepare`'s steps) as `SlideInterrupted`,
which the command turns back into the signal's exception, with its exit code and cleanup.

A signal the process inherited as ignored stays ignored: `nohup` ignores SIGHUP so that a run
outlives its terminal, and a non-interactive shell's background job ignores SIGINT.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from wsi_segment.errors import (
    SlideInterrupted,
    exception_chain,
    handled_signals,
    restore_handlers,
    signal_exception,
)
from wsi_segment.pipeline.cancellation import Cancellation


class SignalStop:
    """The signal that stopped a command's runs, and the token those runs check."""

    def __init__(self) -> None:
        self.token = Cancellation()
        self.signum: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        """The handler: cancel the token (without a lock: this thread may hold the token's,
        inside its `wait`), then raise the signal's exception here."""
        self.signum = signum
        self.token.note(SlideInterrupted)
        raise self.exception()

    def exception(self) -> BaseException:
        """The exception of the signal received: `Terminated` for SIGTERM and SIGHUP (the
        CLI exits 128 + the signal), else Ctrl-C's."""
        return signal_exception(self.signum) if self.signum is not None else KeyboardInterrupt()


@contextlib.contextmanager
def signals_stop_runs() -> Iterator[SignalStop]:
    """While the block runs, Ctrl-C, SIGTERM and SIGHUP raise their exception in the main
    thread and cancel the stop's token (hand `stop.token` to the runs). Only the main thread
    may set handlers: elsewhere (an in-process call from a thread) nothing changes, and the
    token is never cancelled."""
    stop = SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = handled_signals(stop.handle)
    try:
        yield stop
    finally:
        restore_handlers(previous)


def stop_kinds() -> tuple[type[BaseException], ...]:
    """The exceptions a stop arrives as: Ctrl-C's KeyboardInterrupt (our `Terminated` too)
    and, once Prefect is loaded, its `TerminationSignal` (raised by its SIGTERM handler while
    a flow runs). Found through `sys.modules`, so a command that never loads Prefect (the
    CLI's dispatcher, `wsi-segment train`) does not import it for this."""
    prefect = sys.modules.get("prefect.exceptions")
    termination = getattr(prefect, "TerminationSignal", None)
    return (KeyboardInterrupt,) if termination is None else (KeyboardInterrupt, termination)


def stop_in_chain(
    exc: BaseException, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of `kinds` (the stops) behind `exc`, along its causes and contexts,
    or None: a stop a library caught and raised as an error of its own (pydantic-core makes
    the exception a serializer callback raised its error's cause)."""
    behind = exc.__cause__ or exc.__context__
    return next((error for error in exception_chain(behind) if isinstance(error, kinds)), None)
