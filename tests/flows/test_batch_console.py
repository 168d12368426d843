"""The batch CLI's console: which log records reach the terminal (Dask's own, from a real
TLS cluster, included), and real signals through InterruptGuard (sent to a fresh interpreter
that runs the guard in its main thread, where handlers run)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from wsi_segment.errors import Terminated
from wsi_segment.flows.batch_console import BatchConsoleFilter, InterruptGuard

if TYPE_CHECKING:
    from tornado.ioloop import IOLoop

REPO = Path(__file__).resolve().parents[2]


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_the_console_drops_run_errors_and_dask_info_and_keeps_the_rest() -> None:
    keep = BatchConsoleFilter().filter
    assert not keep(record("prefect.task_runs", logging.ERROR))  # "Finished in state Failed"
    assert not keep(record("prefect.flow_runs", logging.ERROR))  # "Crash detected!", tracebacks
    assert not keep(record("distributed.scheduler", logging.INFO))
    assert keep(record("prefect.flow_runs", logging.INFO))
    assert keep(record("prefect.flow_runs", logging.WARNING))  # a slide's warnings
    assert keep(record("distributed.nanny", logging.WARNING))
    assert keep(record("wsi_segment.pipeline", logging.ERROR))


def test_quiet_drops_prefects_info_too_and_the_cli_drops_what_it_prints_itself() -> None:
    """`batch --quiet`: no Prefect INFO line (the server, every task's "Finished in state
    Completed()"); its warnings stay. A run-logger warning marked `REPORT_LINE` (a slide's
    warning, a known failure) is printed by the CLI itself, so it is dropped either way."""
    from wsi_segment.flows.batch_console import REPORT_LINE

    quiet = BatchConsoleFilter(quiet=True).filter
    assert not quiet(record("prefect.task_runs", logging.INFO))
    assert not quiet(record("prefect.flow_runs", logging.INFO))
    assert not quiet(record("prefect", logging.INFO))
    assert quiet(record("prefect.flow_runs", logging.WARNING))
    assert quiet(record("wsi_segment.pipeline", logging.INFO))
    for keep in (quiet, BatchConsoleFilter().filter):
        marked = record("prefect.task_runs", logging.WARNING)
        marked.__dict__.update(REPORT_LINE)
        assert not keep(marked)


class Kept(logging.Handler):
    """Every record of the logger it is added to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


HELD_S = 5.0  # how long the scheduler's event loop is held, as load holds the batch's process
CONNECT_S = 10.0  # Dask's connect timeout here: a first attempt gets a fifth, 2 s < HELD_S


def hold(loop: IOLoop, seconds: float) -> None:
    """Block `loop` (a cluster's event loop, in its own thread) for `seconds`; returns once
    it is blocked."""
    held = threading.Event()

    def block() -> None:
        held.set()
        time.sleep(seconds)

    loop.add_callback(block)
    assert held.wait(10)


async def connect_and_close(address: str, connection_args: dict[str, Any]) -> None:
    """What every Dask peer does to reach a listener: `distributed.comm.connect`."""
    from distributed.comm import connect

    comm = await connect(address, timeout=CONNECT_S, **connection_args)
    await comm.close()


def knock_without_certificate(address: str) -> None:
    """A TLS client without the cluster's certificate (a stranger on the machine)."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection((host, int(port)), timeout=10)
    with sock, contextlib.suppress(OSError), context.wrap_socket(sock) as tls:
        tls.recv(1)  # the listener refuses it: an alert, or the connection closed


def test_quiet_drops_the_handshake_a_dask_retry_gave_up_and_keeps_a_refused_one() -> None:
    """Our local cluster (TLS, a worker process) with its scheduler's event loop held past
    the first attempt of a Dask connect, as a loaded machine holds the batch's process: the
    connect gives that handshake up, closes it and connects again, and the scheduler's
    listener, once free, warns "TLS handshake failed ... EOF occurred in violation of
    protocol". `--quiet` drops that warning (the connection it stood for was made); it keeps
    the one of a client without the certificate, and without `--quiet` both are shown."""
    from wsi_segment.flows.dask_cluster import dask_client

    kept = Kept()
    tcp = logging.getLogger("distributed.comm.tcp")
    tcp.addHandler(kept)
    try:
        with dask_client(workers=1, threads=1) as client:
            address = client.cluster.scheduler_address
            hold(client.cluster.loop, HELD_S)
            asyncio.run(connect_and_close(address, client.security.get_connection_args("client")))
            knock_without_certificate(address)
            deadline = time.monotonic() + 10
            while len(kept.records) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        tcp.removeHandler(kept)
    failed = [r for r in kept.records if "TLS handshake failed" in r.getMessage()]
    assert len(failed) == 2, [r.getMessage() for r in kept.records]
    abandoned, refused = failed
    assert isinstance(abandoned.args, tuple) and isinstance(abandoned.args[-1], ssl.SSLEOFError)
    assert "EOF occurred in violation of protocol" in abandoned.getMessage()
    assert "EOF" not in refused.getMessage()
    quiet, console = BatchConsoleFilter(quiet=True).filter, BatchConsoleFilter().filter
    assert not quiet(abandoned)
    assert quiet(refused)
    assert console(abandoned) and console(refused)


def test_quiet_drops_a_handshake_reset_by_its_peer_too() -> None:
    """The same retry when the listener had already answered: the peer's socket closes with
    the answer unread, and the listener reads "Connection reset by peer"."""
    from wsi_segment.flows.batch_console import DASK_TCP_LOGGER

    reset = logging.LogRecord(
        DASK_TCP_LOGGER,
        logging.WARNING,
        __file__,
        1,
        "Listener on %r: TLS handshake failed with remote %r: %s",
        ("tls://127.0.0.1:40000", "tls://127.0.0.1:50000", ConnectionResetError(104, "reset")),
        None,
    )
    assert not BatchConsoleFilter(quiet=True).filter(reset)
    assert BatchConsoleFilter().filter(reset)


def deliver(signum: int) -> None:
    """Send `signum` to this process and return once its handler has run (main thread only).

    Python's C-level handler writes the signal's number to the wakeup fd when the signal
    arrives, and the main thread runs the Python handler at its next bytecode check: waiting
    for that byte, then a few calls, replaces a fixed second per signal (most are ignored,
    so nothing else says their handler ran)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    try:
        os.kill(os.getpid(), signum)
        ready, _, _ = select.select([read_end], [], [], 30)
        assert ready, f"signal {signum} never arrived"
        for _ in range(5):
            time.sleep(0.001)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)


SIGNALS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated, signal.SIGHUP: Terminated}


def first_signal_outcome(signum: int) -> tuple[str, int | None, bool, str, bool]:
    """`signum` sent inside InterruptGuard, then one of each signal: (what the first raised,
    its `signum`, guard fired, what the later ones raised, handlers restored after)."""
    before = {s: signal.getsignal(s) for s in SIGNALS}
    raised: BaseException | None = None
    later = "nothing"
    with InterruptGuard() as guard:
        try:
            deliver(signum)
        except BaseException as exc:  # KeyboardInterrupt, Terminated
            raised = exc
        fired = guard.fired
        try:
            for again in SIGNALS:
                deliver(again)
        except BaseException as exc:
            later = type(exc).__name__
    restored = {s: signal.getsignal(s) for s in before} == before
    return type(raised).__name__, getattr(raised, "signum", None), fired, later, restored


def prefect_sigterm_outcome() -> tuple[str, bool]:
    """Prefect raises TerminationSignal for SIGTERM during a flow, then, on the way out,
    sends SIGTERM again to the handler it had replaced: (what that raised, guard fired)."""
    from prefect.exceptions import TerminationSignal

    later = "nothing"
    with InterruptGuard() as guard:
        try:
            raise TerminationSignal(signal.SIGTERM)
        except TerminationSignal:
            try:
                deliver(signal.SIGTERM)
            except BaseException as exc:
                later = type(exc).__name__
        return later, guard.fired


class SignalledWhileFinalised:
    """An object whose finaliser signals this process and runs on until the handler in
    place has run inside it (what it raises ends the loop): where Python prints the
    handler's exception and drops it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pass  # the handler runs between two of these bytecodes


def dropped_signal_outcome(signum: int) -> tuple[list[str], str, str, str, bool]:
    """`signum` raised by the guard's handler inside a finaliser while a batch's SlideWatch
    is open: (the exceptions Python dropped, what the watch noted, what its
    `raise_signalled` raises, the guard's `unraised()`, handlers and hook back after)."""
    from wsi_segment.flows.slide_watch import SlideWatch

    before = {s: signal.getsignal(s) for s in SIGNALS}
    dropped: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = dropped.append
    try:
        with InterruptGuard() as guard, SlideWatch(None) as watch:
            SignalledWhileFinalised(signum)  # finalised at once
            try:
                watch.raise_signalled()
                again = "nothing"
            except BaseException as exc:
                again = f"{type(exc).__name__} {getattr(exc, 'signum', None)}"
        hook_back = sys.unraisablehook == dropped.append
    finally:
        sys.unraisablehook = hook
    unraised = guard.unraised()
    restored = {s: signal.getsignal(s) for s in before} == before and hook_back
    kinds = [type(d.exc_value).__name__ for d in dropped]
    noted = type(watch.dropped.stop).__name__
    told = f"{type(unraised).__name__} {getattr(unraised, 'signum', None)}"
    return kinds, noted, again, told, restored


def prefect_dropped_outcome(watching: bool) -> tuple[list[str], str, str]:
    """SIGTERM inside a finaliser while Prefect's own handler is in place (as during a
    batch's flow), inside InterruptGuard and (`watching`) a SlideWatch: (the exceptions
    Python dropped, what the watch's `raise_signalled` raises, the guard's `unraised()`)."""
    from prefect.utilities.engine import capture_sigterm

    from wsi_segment.flows.slide_watch import SlideWatch

    dropped: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = dropped.append
    again = "no watch"
    try:
        watch = SlideWatch(None) if watching else None
        with InterruptGuard() as guard, capture_sigterm(), watch or contextlib.nullcontext():
            SignalledWhileFinalised(signal.SIGTERM)  # finalised at once
            try:
                if watch is not None:
                    watch.raise_signalled()
                    again = "nothing"
            except BaseException as exc:
                again = type(exc).__name__
    finally:
        sys.unraisablehook = hook
    unraised = guard.unraised()
    told = f"{type(unraised).__name__} {getattr(unraised, 'signum', None)}"
    return [type(d.exc_value).__name__ for d in dropped], again, told


def guard_outcomes() -> dict[str, object]:
    """Every scenario above, in the process that runs this (`guard_run`)."""
    assert threading.current_thread() is threading.main_thread()  # where handlers run
    first = {int(s): first_signal_outcome(s) for s in SIGNALS}
    dropped = {int(s): dropped_signal_outcome(s) for s in (signal.SIGINT, signal.SIGHUP)}
    prefect = {w: prefect_dropped_outcome(w) for w in (True, False)}
    return {
        "first": first,
        "prefect": prefect_sigterm_outcome(),
        "dropped": dropped,
        "prefect_dropped": prefect,
    }


@pytest.fixture(scope="module")
def guard_run() -> dict:
    """The signal scenarios in a fresh interpreter, never in the test session's own process:
    a signal sent there lands on whatever earlier tests' libraries left in it. OpenVINO's CPU
    plugin, for one, gives the thread that creates it an alternate signal stack and unmaps
    that stack when its graphs are freed, restoring the previous one only if freed in
    reverse order: the next signal the main thread handles then kills the whole session
    (a pytest-xdist worker dies "not properly terminated") with SIGSEGV."""
    # imported here, not at the top: the fresh interpreter needs none of tests.conftest
    from tests.conftest import foreground_signals

    code = "from tests.flows.test_batch_console import guard_outcomes as g; print(repr(g()))"
    with foreground_signals():
        ran = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    assert ran.returncode == 0, ran.stderr
    return ast.literal_eval(ran.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("signum", list(SIGNALS), ids=lambda s: s.name)
def test_the_first_signal_interrupts_and_later_ones_are_ignored(guard_run, signum) -> None:
    raised, raised_signum, fired, later, restored = guard_run["first"][int(signum)]
    assert raised == SIGNALS[signum].__name__
    if SIGNALS[signum] is Terminated:
        assert raised_signum == signum  # SIGHUP exits 129, SIGTERM 143
    assert fired
    assert later == "nothing"  # SIGINT, SIGTERM and SIGHUP again: ignored
    assert restored


@pytest.mark.parametrize(
    ("signum", "told"),
    [(signal.SIGINT, "KeyboardInterrupt None"), (signal.SIGHUP, f"Terminated {signal.SIGHUP}")],
    ids=["SIGINT", "SIGHUP"],
)
def test_a_signal_whose_exception_python_drops_still_stops_the_batch(
    guard_run, signum, told
) -> None:
    """Python drops an exception a handler raises inside a finaliser; the batch went on to
    its end. While the batch's SlideWatch is open it notes the dropped exception, and the
    wait for the slides raises it again (end to end, and Prefect's SIGTERM:
    tests/flows/test_batch_interrupt.py); the CLI raises it too if the batch ended all the
    same (`InterruptGuard.unraised`)."""
    kinds, noted, again, got, restored = guard_run["dropped"][int(signum)]
    assert kinds == [SIGNALS[signum].__name__]  # the exception was dropped
    assert noted == SIGNALS[signum].__name__
    assert again == told  # what the batch's wait for its slides raises
    assert got == told  # what the CLI raises if the batch ended all the same
    assert restored


@pytest.mark.parametrize("watching", [True, False], ids=["in-the-wait", "outside-it"])
def test_prefect_s_sigterm_whose_exception_python_drops_still_stops_the_batch(
    guard_run, watching
) -> None:
    """During a batch's flow SIGTERM is Prefect's handler's (`TerminationSignal`), not the
    guard's. Dropped in a finaliser while the slides are waited for, the watch raises it
    again; dropped elsewhere, the CLI raises `Terminated` (exit 143) once the batch ended."""
    kinds, again, told = guard_run["prefect_dropped"][watching]
    assert kinds == ["TerminationSignal"]
    assert again == ("TerminationSignal" if watching else "no watch")
    assert told == "Terminated 15"


def test_prefect_passing_on_its_sigterm_is_not_a_second_interrupt(guard_run) -> None:
    """Prefect's second SIGTERM, while its TerminationSignal is handled, raises nothing."""
    later, fired = guard_run["prefect"]
    assert later == "nothing"
    assert fired


def test_a_terminated_raised_over_the_batchs_interrupt_keeps_its_results() -> None:
    """Prefect's passed-on SIGTERM can land while the batch's `BatchTerminated` is on its
    way out, not handled: our handler's `Terminated` then replaces it. The CLI still finds
    the results (and the table) as its context, and reports the signal it had."""
    from wsi_segment.flows.batch_flow import BatchTerminated
    from wsi_segment.flows.batch_interrupt import BatchInterrupted
    from wsi_segment.flows.cli_batch import batch_stop, cli_interrupt
    from wsi_segment.pipeline.segment import SlideResult

    results = [SlideResult("a.svs", "done", None)]
    try:
        try:
            raise BatchTerminated(signal.SIGTERM, results)
        finally:
            raise Terminated("terminated by signal 15", signal.SIGTERM)
    except Terminated as exc:
        stopped = batch_stop(exc)
    assert isinstance(stopped, BatchTerminated) and stopped.results == results
    interrupt = cli_interrupt(stopped)
    assert isinstance(interrupt, Terminated) and interrupt.signum == signal.SIGTERM
    assert batch_stop(KeyboardInterrupt()) is None  # before any slide: nothing to report
    try:
        raise BatchInterrupted(results) from Terminated("hang-up", signal.SIGHUP)
    except BatchInterrupted as exc:
        hangup = cli_interrupt(exc)
    assert isinstance(hangup, Terminated) and hangup.signum == signal.SIGHUP
