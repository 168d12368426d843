"""`wsi-segment batch INPUT --out DIR`: the terminal's door to the batch loop.

With no Prefect API configured the batch runs in this process (`flows.terminal_batch`);
with one (`PREFECT_API_URL`, in the environment or the active Prefect profile), as a run of
the `segment-batch` flow on that server (`flows.batch_flow`): the same loop either way
(`flows.batch_loop`). INPUT is a folder of slides, a glob ('slides/**/*.svs') or a manifest
CSV (slide path, optional mpp, optional output name). The input and options are checked
first, so a typo costs a second. Exit code 1 if any slide failed anew,
with one `error:` line per failed slide on stderr; 0 when the only failures are known ones
(failed before, slide, model and parameters unchanged: not retried without --retry-failed),
each named on a `warning:` line. Ctrl-C (SIGTERM, SIGHUP alike) stops the slides in flight,
removes their partial outputs, prints the table of what finished and exits 130 (143, 129)
through `flows.cli`, whether the signal reached this process alone or its whole process
group (`flows.batch_interrupt`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import Terminated, WsiSegmentError, signal_exception
from wsi_segment.flows.cli_segment import (
    add_segment_options,
    check_roi_file,
    params_from_args,
    positive_int,
    print_warnings,
)

if TYPE_CHECKING:
    from wsi_segment.flows.batch_interrupt import BatchStop
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import SlideResult


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="segment a folder, glob or manifest CSV of slides",
        description="Segment many slides: slides run concurrently, failures are isolated, "
        "finished slides are skipped, and chunks run in this process or on a Dask cluster "
        "(local, or --dask-address). Runs in this process, without a server; as a run of "
        "the segment-batch Prefect flow where PREFECT_API_URL names a Prefect server.",
    )
    parser.add_argument(
        "input", metavar="INPUT", help="folder of slides, glob pattern, or manifest .csv"
    )
    add_segment_options(parser)
    parser.add_argument(
        "--dask-address",
        metavar="ADDR",
        help="existing Dask scheduler, e.g. tls://host:8786 with the lab's certificates in Dask's "
        "config (docs/deploy.md; default: start a local cluster on loopback, with TLS)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int(0, 1024),
        help="local Dask worker processes (default: one per GPU on a machine with several; "
        "else none: chunks run through the engine in this process, as with 0)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int(1, 256),
        default=2,
        help="slides in flight at once; without a cluster they share the decoder processes "
        "and take turns on the model, so one slide's tissue detection and outputs overlap "
        "the other's inference (default: %(default)s)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also run slides that failed before and have not changed since (known "
        "failures are otherwise reported as such, not retried, and do not fail the batch)",
    )
    parser.add_argument(
        "--slide-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="stop a slide that runs longer than this, mark it failed (its partial outputs "
        "removed) and go on with the others (default: no limit)",
    )
    parser.set_defaults(run=run)


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value:g} is not > 0 seconds")
    return value


def flow_options(params: SegmentParams) -> dict[str, Any]:
    """SegmentParams fields for the flow's JSON `options`."""
    return {
        k: v
        for k, v in params.as_dict().items()
        if k not in ("model_dir", "output_name") and v is not None
    }


def run(args: argparse.Namespace) -> int:
    from wsi_segment.flows.prefect_env import configured_api_url

    params = params_from_args(args)  # the options checked once, before anything starts
    if not check_roi_file(args.roi):
        return 2
    if args.workers or args.dask_address:  # a cluster: Dask's console handler, made at its
        import distributed  # noqa: F401  import, is there for the console filter to take
    api_url = configured_api_url()
    if api_url is None:  # the loop reads and checks the input first
        return run_and_report(args.out, args.quiet, lambda: run_here(args, params))
    from wsi_segment.pipeline.batch_inputs import parse_batch_input
    from wsi_segment.pipeline.outputs.shared_access import refuse_unusable_root

    parse_batch_input(args.input, args.out)  # bad input: one error line, before Prefect starts
    refuse_unusable_root(args.out)
    return run_and_report(args.out, args.quiet, lambda: run_flow(args, params, api_url))


def run_and_report(
    out: str | Path, quiet: bool, run_slides: Callable[[], list[SlideResult]]
) -> int:
    """`run_slides` (a batch, by either door) with its console and stops handled, then its
    table, `error:` lines and report paths; the exit code (0, or 1 if a slide failed anew).
    A stop raises its interrupt after the table (`flows.cli` prints the one line)."""
    from wsi_segment.flows.batch_console import InterruptGuard, cli_stop, quiet_console
    from wsi_segment.flows.signal_stop import stop_kinds

    report_before = report_stamps(out)
    interrupt: KeyboardInterrupt | None = None
    with quiet_console(quiet), InterruptGuard() as guard:
        try:
            results = run_slides()
        except stop_kinds() as exc:
            guard.hold()
            stopped = batch_stop(exc)
            if stopped is None:  # before any slide ran, or after all ended: no table
                raise cli_stop(exc) from None  # Prefect's SIGTERM exits as ours does
            results, interrupt = stopped.results, cli_interrupt(stopped)
        except Exception as exc:
            stop = guard.signum
            if stop is None or isinstance(exc, WsiSegmentError):
                raise
            raise signal_exception(stop) from exc  # a library made the stop its own error
        report(results)
        print_report_paths(out, report_before)
        if interrupt is None:  # a signal whose exception Python dropped outside the slides' wait
            interrupt = guard.unraised()
    if interrupt is not None:  # flows.cli prints the one `error:` line, exits 130 / 143 / 129
        raise interrupt
    return 1 if any(result.status == "failed" for result in results) else 0


def run_here(args: argparse.Namespace, params: SegmentParams) -> list[SlideResult]:
    """The batch in this process (no Prefect API configured)."""
    from wsi_segment.flows.batch_loop import BatchRequest
    from wsi_segment.flows.terminal_batch import run_terminal_batch

    request = BatchRequest(
        str(args.input),
        str(args.out),
        params,
        args.dask_address,
        args.workers,
        args.concurrency,
        args.retry_failed,
        args.slide_timeout,
    )
    return run_terminal_batch(request, args.quiet)


def run_flow(args: argparse.Namespace, params: SegmentParams, api_url: str) -> list[SlideResult]:
    """The `segment_batch` flow's run on the Prefect server at `api_url` for the command
    line's arguments (every slide's result, whether the flow failed for a failed slide or
    not)."""
    from wsi_segment.flows.batch_console import quiet_console
    from wsi_segment.flows.batch_flow import BatchFailedError, segment_batch

    try:  # the console filter again, now on the handlers Prefect's import set up
        with quiet_console(args.quiet):
            return segment_batch(
                input=str(args.input),
                out=str(args.out),
                model_dir=str(args.model) if args.model else None,
                dask_address=args.dask_address,
                workers=args.workers,
                concurrency=args.concurrency,
                options=flow_options(params),
                slide_timeout=args.slide_timeout,
                retry_failed=args.retry_failed,
            )
    except BatchFailedError as exc:
        return exc.results
    except Exception as exc:
        from wsi_segment.flows.server_failure import server_failure

        failed = server_failure(exc, api_url)
        if failed is None:
            raise
        print(file=sys.stderr)  # Prefect's "Error logging to API" lines end in no newline
        raise failed from None


def report_stamps(out: str | Path) -> dict[str, tuple[int, int] | None]:
    """Each report file's (inode, mtime) now, None where there is none: a rebuild replaces
    the file (a new inode), so a stamp that did not change means not rewritten."""
    from wsi_segment.pipeline.outputs.cohort import COHORT_NAME
    from wsi_segment.pipeline.outputs.report_page import PAGE_NAME

    stamps: dict[str, tuple[int, int] | None] = {}
    for name in (PAGE_NAME, COHORT_NAME):
        try:
            st = os.stat(Path(out) / name)
            stamps[name] = (st.st_ino, st.st_mtime_ns)
        except OSError:
            stamps[name] = None
    return stamps


def print_report_paths(out: str | Path, before: dict[str, tuple[int, int] | None]) -> None:
    """Where the cohort.csv and report.html this batch wrote are (the flow rebuilds them
    after each slide and at its end: `pipeline.morning_report`). One it could not rewrite
    (a file not ours in the way, OUT read-only: its warning said why) is not announced as
    tonight's: it shows an earlier run, or is someone else's."""
    now = report_stamps(out)
    for name in now:
        path = Path(out) / name
        if now[name] is not None and now[name] != before[name]:
            print(f"report: {path}", flush=True)
        elif now[name] is not None:
            print(f"warning: {path} was not rewritten by this batch", file=sys.stderr, flush=True)


def batch_stop(exc: BaseException) -> BatchStop | None:
    """The batch's own stop in `exc` or what it was raised during. Prefect passes a
    SIGTERM it turned into `TerminationSignal` on to the handler it replaced (ours) with a
    second SIGTERM; if that lands while the batch's stop is on its way out, its
    `Terminated` replaces it, and the results travel on as its context."""
    from wsi_segment.flows.batch_interrupt import BatchStop

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BatchStop):
            return current
        seen.add(id(current))
        current = current.__context__
    return None


def cli_interrupt(stopped: BatchStop) -> KeyboardInterrupt:
    """What `flows.cli` reports for a stopped batch: a flow's `BatchTerminated` as our
    `Terminated` of its signal; SIGTERM and SIGHUP outside a flow, which reach the batch as
    the cause of a `BatchInterrupted`, as that `Terminated`; else Ctrl-C."""
    if not isinstance(stopped, KeyboardInterrupt):
        return Terminated.by(stopped.signal)  # type: ignore[attr-defined]
    if isinstance(stopped.__cause__, Terminated):
        return stopped.__cause__
    return stopped


def report(results: list[SlideResult]) -> None:
    """Warnings, the table on stdout, one `error:` line per failed slide, the tally."""
    from wsi_segment.pipeline.batch_report import (
        batch_rows,
        counts,
        failure_message,
        known_failure_message,
        markdown_table,
    )

    for result in results:
        print_warnings(result)
    print(markdown_table(batch_rows(results)), flush=True)
    for result in results:
        if result.status == "known-failure":
            print(f"warning: {known_failure_message(result)}", file=sys.stderr)
        elif result.status == "failed":
            print(f"error: {failure_message(result)}", file=sys.stderr)
    tally = counts(results)
    print(
        ", ".join(
            f"{n} {status}"
            for status, n in tally.items()
            if n or status in ("done", "up-to-date", "failed")
        ),
        file=sys.stderr,
    )
