"""The open-file limit (RLIMIT_NOFILE): raised when a run starts, refused when too low, and
named, never blamed on the slide, when it runs out anyway.

A run holds far more descriptors than its slide files: the decoder processes' pipes, the
Dask cluster's connections, the Prefect server's, zarr chunks being written. Measured on
the CMU slide (peak of `/proc/PID/fd` per process, docs/reliability.md "Open files"): one
slide 10 in the CLI's process, about 12 + 3 per decoder process with `--decoders`; a batch
53 with its one Dask worker, 65 with `--workers 2`; with `--workers 0 --decoders 16`, 71
for one slide in flight and 120 for the default two (the GPU machine's default plan at
most); every child process under 60. A shell's soft limit is often 1,024, a scheduler's or a container's may
be far less (openslide then reported a slide it could not open as unsupported, and a batch
recorded healthy slides as known failures), while the hard limit, which a process may raise
its soft one to unprivileged, is 4,096 or more on most systems.

So a run raises its soft limit once, before it starts a thread or a child (children
inherit it: Dask workers, decoders, polygon processes): `require_open_files`, called by the
CLI's `run_command`, by each Prefect flow and by the SLURM recipe, which refuses the run up
front when even that is below `MIN_OPEN_FILES`. Running out during a run is
`TooManyOpenFiles` with the fix (`raise_if_exhausted`), wherever the slide's reader, a
slide's stage sequence or the CLI meets it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
from collections.abc import Iterator

from wsi_segment.errors import TooManyOpenFiles, exception_chain

# Twice the largest default plan's peak (120, above): a run refused under it would run short.
MIN_OPEN_FILES = 256
# The soft limit a run raises to when the hard one is higher or unlimited: 250 times what a
# run needs, and small enough that a child process which closes every possible descriptor
# at start (some C programs loop up to the limit) does not slow down by a million calls.
CEILING = 65_536
SUGGESTED = 4_096  # what the fix proposes (a common hard limit; 16 times the minimum)
EXHAUSTED = {n: os.strerror(n) for n in (errno.ENFILE, errno.EMFILE)}  # ENFILE's text first:
# "Too many open files in system" contains EMFILE's "Too many open files"


@functools.cache
def raise_soft_limit() -> tuple[int, int]:
    """Raise this process's soft limit to its hard one (at most `CEILING`; never lowered),
    once per process; the (soft, hard) limits it leaves. A platform that refuses the value
    (macOS caps it below an unlimited hard limit) keeps its soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def require_open_files(needed: int = MIN_OPEN_FILES) -> None:
    """Raise the soft limit (`raise_soft_limit`); refuse the run, before it writes anything,
    when even then a process may open fewer than `needed` files."""
    soft, hard = raise_soft_limit()
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise TooManyOpenFiles(
            f"the open-file limit is {soft} (`ulimit -n`; its hard limit, the most it can be "
            f"raised to without an administrator: {_shown(hard)}), and a run needs at least "
            f"{needed}; {fix(needed)}"
        )


def fix(needed: int = SUGGESTED) -> str:
    """How to give a run `needed` descriptors (or `SUGGESTED`, if more)."""
    n = max(needed, SUGGESTED)
    return (
        f"raise the limit before the run: `ulimit -n {n}` in the shell or job script that "
        "starts wsi-segment (up to the hard limit, `ulimit -Hn`; above it an administrator's "
        f"setting: /etc/security/limits.conf, systemd LimitNOFILE={n}, docker run --ulimit "
        f"nofile={n}:{n}, or the scheduler's limit), and run again"
    )


def exhaustion(exc: BaseException | None) -> int | None:
    """EMFILE or ENFILE when `exc`, its cause or its context ran out of descriptors: an
    OSError's errno, or those words in an error that carries only them (openslide's
    OpenSlideError: "Couldn't open ...: Too many open files"); None otherwise."""
    for error in exception_chain(exc):
        if isinstance(error, OSError) and error.errno in EXHAUSTED:
            return error.errno
        text = _text(error)
        for number, words in EXHAUSTED.items():
            if words in text:
                return number
    return None


def table_full() -> int | None:
    """EMFILE or ENFILE when this process cannot open a descriptor now; None when it can.
    For errors that do not say why a file did not open: openslide reports a slide it could
    not open as "Unsupported or missing image file"."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        return exc.errno if exc.errno in EXHAUSTED else None
    return None


def raise_if_exhausted(what: str, exc: BaseException, probe: bool = False) -> None:
    """Raise `out_of_files(what, ...)` from `exc` when it ran out of descriptors (or, with
    `probe`, when none can be opened now: `table_full`); return otherwise."""
    number = exhaustion(exc)
    if number is None and probe:
        number = table_full()
    if number is not None:
        raise out_of_files(what, number) from exc


@contextlib.contextmanager
def exhaustion_named(what: str) -> Iterator[None]:
    """Inside, an error of any kind that ran out of descriptors (a `SlideError` that wraps
    the OSError, an `OutputError` of a zarr chunk not written) leaves as `out_of_files`."""
    try:
        yield
    except TooManyOpenFiles:
        raise
    except Exception as exc:
        raise_if_exhausted(what, exc)
        raise


def out_of_files(what: str, number: int) -> TooManyOpenFiles:
    """The error of running out (`number`: EMFILE or ENFILE) while doing `what` (it names
    the file, or the command): the cause, that it says nothing about the slide, the fix."""
    if number == errno.ENFILE:
        return TooManyOpenFiles(
            f"{what}: the machine's table of open files is full ({EXHAUSTED[number]}), which "
            "says nothing about the slide; other processes hold too many: close some or raise "
            "the system's limit (sysctl fs.file-max), and run again"
        )
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return TooManyOpenFiles(
        f"{what}: this process ran out of file descriptors ({EXHAUSTED[number]}: it may open "
        f"{_shown(soft)}), which says nothing about the slide; {fix(2 * soft)}"
    )


def _text(exc: BaseException) -> str:
    """`str(exc)`, or "" where a library's `__str__` fails (aiohttp's, on an error made
    without its request): asking must never raise."""
    try:
        return str(exc)
    except Exception:
        return ""


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
