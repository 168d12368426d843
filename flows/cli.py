"""The `wsi-segment` command: a thin dispatcher over one small module per subcommand.

`wsi-segment SLIDE ...` is shorthand for `wsi-segment segment SLIDE ...`, options before
the slide included (`wsi-segment --quiet SLIDE`). Expected failures
(`WsiSegmentError`) print one `error:` line (a URL in it without its query:
`wsi.shown_path`) and exit 1; usage errors exit 2 (argparse).
Ctrl-C prints `error: interrupted` and exits 130; SIGTERM takes the same path (`Terminated`)
and exits 143, as a process killed by it would, so schedulers read it as terminated; SIGHUP
(the terminal or ssh session closed) too, exiting 129. A stop that a library turned into an
error of its own (`NotedSignals`) still ends the command as that stop. A reader of stdout that
leaves (`| head -1`) ends it quietly with 141, as SIGPIPE would (`stdout_closed_early`).
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib
import os
import select
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from wsi_segment.address_space import memory_named, require_address_space
from wsi_segment.errors import (
    Terminated,
    WsiSegmentError,
    handled_signals,
    restore_handlers,
    signal_exception,
)
from wsi_segment.flows.allocator import limit_malloc_arenas
from wsi_segment.flows.signal_stop import stop_in_chain, stop_kinds
from wsi_segment.open_files import exhaustion_named, require_open_files
from wsi_segment.wsi.shown_path import shown_text

# subcommand name -> module implementing add_parser(subparsers) and run(args) -> int
SUBCOMMANDS: dict[str, str] = {
    "segment": "wsi_segment.flows.cli_segment",
    "info": "wsi_segment.flows.cli_info",
    "train": "wsi_segment.flows.cli_train",
    "evaluate": "wsi_segment.flows.cli_evaluate",
    "batch": "wsi_segment.flows.cli_batch",
    "report": "wsi_segment.flows.cli_report",
}
TOP_LEVEL_OPTIONS = ("-h", "--help")  # the options `build_parser` itself has
EXIT_S = 60.0  # the most an interrupted command may take to exit after its report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsi-segment",
        description="Tissue segmentation of whole-slide images with QuPath-ready outputs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script (argv None: this process's command line) or an in-process call."""
    if argv is None:
        limit_malloc_arenas()  # before any thread starts (flows/allocator.py)
        try:
            code = _main(None)
        finally:
            # The process exits next: move everything to the permanent GC generation so the
            # interpreter does not walk torch's object graph once more while shutting down
            # (1.3-1.6 s of a run on a 2-core machine). Only for the real command line:
            # in-process callers (tests) keep normal garbage collection.
            gc.freeze()
        if code in (129, 130, 143):  # interrupted, cleaned up and reported: the exit is bounded
            exit_within(EXIT_S, code)
        return code
    return _main(argv)


def exit_within(seconds: float, code: int) -> None:
    """End the process with `code` if it is still alive `seconds` from now, after printing
    every thread's stack on stderr (what hung, for a bug report). The interpreter's exit
    joins threads and processes this command did not start itself (an executor's threads,
    a queue's feeder, non-daemon children) and runs atexit handlers: after an interrupt a
    scheduler must see the process end even if one of them waits for ever."""

    def end() -> None:
        print(f"warning: still exiting {seconds:g} s after the interrupt was reported; "
              "ending the process (the stacks of its threads follow)", file=sys.stderr,
              flush=True)  # fmt: skip
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(code)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()


def _main(argv: Sequence[str] | None) -> int:
    args_list = implicit_segment(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return run_command(args)


def implicit_segment(args: list[str]) -> list[str]:
    """`args` with the `segment` subcommand put first where none is named: `wsi-segment
    SLIDE ...` and `wsi-segment --quiet SLIDE ...` alike (options before the slide). Only the
    command's own help (`-h`, `--help`) and an empty line are left to the command."""
    if not args or args[0] in SUBCOMMANDS or args[0] in TOP_LEVEL_OPTIONS:
        return args
    return ["segment", *args]


def run_command(args: argparse.Namespace) -> int:
    """`args.run(args)`'s exit status, its expected failures and stops reported in one
    `error:` line (1; 128 + the signal). The open-file limit is raised first, or the
    command refused if even its hard limit is too low, and running out of descriptors
    anyway is that one line too, with its fix (`wsi_segment.open_files`), never a
    traceback; so is an address-space limit too low, or running out of memory
    (`wsi_segment.address_space`). A stop signal noted while it ran whose exception never reached it (Python
    drops one raised inside a finaliser) still ends it as that stop: a scheduler's SIGTERM
    must not read as success."""
    noted = NotedSignals()
    try:
        what = f"wsi-segment {args.command}"
        with noted, exhaustion_named(what), memory_named(what):
            require_open_files()  # before the command starts a thread, a child or a file
            require_address_space()  # before it loads a library that could spin under it
            code = int(args.run(args) or 0)
        if noted.signum is not None:
            return report_stop(signal_exception(noted.signum))
        return code
    except WsiSegmentError as exc:
        print(f"error: {shown_text(str(exc))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        return stdout_closed_early()
    except KeyboardInterrupt as exc:  # Ctrl-C, or our `Terminated` of SIGTERM and SIGHUP
        return report_stop(exc, exc.__cause__)  # a command's own mapping of an error below
    except Exception as exc:
        # a library caught the stop's exception and raised its own (pydantic-core's
        # serializer, when a SIGTERM lands in Prefect's settings while Prefect imports)
        stop = signal_exception(noted.signum) if noted.signum is not None else stop_behind(exc)
        if stop is None:
            raise
        return report_stop(stop, exc)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`wsi-segment ... | head -1`):
    the kernel flags its write end with POLLERR. Another pipe's BrokenPipeError (a decoder's)
    is then told apart from the reader's choice to stop reading."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # None (closed), or not a real file
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _fd, events in poller.poll(0))


def stdout_closed_early() -> int:
    """The reader of stdout left: end quietly as a process killed by SIGPIPE would (exit
    141), as Unix tools do. stdout points at /dev/null so the interpreter's final flush does
    not fail too (Python's documented recipe). What was written stays: every output folder
    is published whole before its line is printed, and the slides after it are not started,
    as with a real SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def stop_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The stop behind `exc`, its cause or context (`signal_stop.stop_in_chain`), as the CLI
    reports it: Ctrl-C's KeyboardInterrupt, our `Terminated`, or Prefect's `TerminationSignal`
    (the SIGTERM of a running flow, raised by Prefect's handler, which notes nothing of ours)
    as `Terminated`; None if there is none."""
    stop = stop_in_chain(exc, stop_kinds())
    if stop is None or isinstance(stop, KeyboardInterrupt):
        return stop
    return signal_exception(getattr(stop, "signal", signal.SIGTERM))


def report_stop(stop: KeyboardInterrupt, instead_of: BaseException | None = None) -> int:
    """Print the stop's one `error:` line; its exit status (128 + the signal). `instead_of`:
    the error the stop came out as, named on a `note:` line when it is not a stop itself,
    since it may be a real fault met while stopping (a cleanup's bug), not a rewording."""
    if isinstance(stop, Terminated):
        print(f"error: terminated ({stop.signal_name})", file=sys.stderr)
        code = 128 + stop.signum
    else:
        print("error: interrupted", file=sys.stderr)
        code = 130
    if isinstance(instead_of, Exception):
        text = str(instead_of).strip().splitlines()
        named = f"{type(instead_of).__name__}: {text[0]}" if text else type(instead_of).__name__
        print(f"note: the stop came out as {named}", file=sys.stderr)
    return code


class NotedSignals:
    """While entered (a command's run), SIGINT, SIGTERM and SIGHUP raise their exception in
    the main thread (`Terminated`, a KeyboardInterrupt, for SIGTERM and SIGHUP, so they clean
    up as Ctrl-C does), and the first one is noted (`signum`) before it raises: a library
    that catches that exception and raises one of its own (pydantic-core reports a Python
    callback's KeyboardInterrupt as its own serialization error) would otherwise end the
    command with that error's traceback and exit 1. The previous handlers come back on exit.
    One the process inherited as ignored stays ignored (`nohup`'s SIGHUP: the run outlives
    its terminal). Only the main thread may set handlers: elsewhere (an in-process call from
    a thread) nothing changes. (A command's own handlers take over where they are set:
    `flows.signal_stop`, the batch's `InterruptGuard`.)"""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> NotedSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = handled_signals(self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        restore_handlers(self._previous)
        self._previous = {}

    def handle(self, signum: int, frame: object) -> None:
        """The handler: `Terminated` for SIGTERM and SIGHUP, KeyboardInterrupt for SIGINT."""
        self.signum = self.signum or signum
        raise signal_exception(signum)


if __name__ == "__main__":
    sys.exit(main())
