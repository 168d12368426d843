"""The one exception hierarchy of wsi-segment.

Every expected failure (bad slide, bad model folder, bad option, bad dataset, unwritable
output) is a `WsiSegmentError`. The CLI prints `error: <message>` and exits 1 for these (2
for a bad `--roi` file, a usage error) and only these; anything else is a bug and keeps its
traceback. Messages name the file and the fix. This module has no dependencies so every package may import it; it sits outside `wsi/`
and `models/`, which must not import each other.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from typing import Any

# Signals that end a run as Ctrl-C does, cleaning up: SIGTERM (schedulers, `timeout`, Docker,
# Kubernetes) and SIGHUP (the terminal or the ssh session closed). SIGTERM first.
TERMINATING_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)
STOPPING_SIGNALS: tuple[int, ...] = (signal.SIGINT, *TERMINATING_SIGNALS)  # and Ctrl-C


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then its cause (else its context), and so on, each once: what raised an error
    a library wrapped in its own (a cycle ends the walk)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


class WsiSegmentError(Exception):
    """Base of all expected errors; the message is shown to the user as is."""


class SlideError(WsiSegmentError):
    """A slide is missing, not a slide, truncated or unreadable."""


class DecoderDied(SlideError):
    """A decoder process died while reading a slide: a damaged file, or the machine ran out
    of memory; a batch does not record it as a known failure (it may not recur)."""


class ClusterLost(WsiSegmentError):
    """The Dask client or scheduler can no longer deliver a slide's bands (the client closed,
    its event loop stopped, the scheduler lost the task): the cluster's trouble, not the
    slide's, so a batch never records it as a known failure."""


class PolygonProcessDied(WsiSegmentError):
    """A polygon process (`pipeline.inference.polygon_processes`) ended during a run: killed
    from outside, or the machine ran out of memory; not a `SlideError`, so a batch does not
    record it as a known failure of the slide."""


class NoByteRanges(SlideError):
    """An HTTP server does not serve a slide in parts (it ignores `Range:` and sends the
    whole file, or says `Accept-Ranges: none`), which reading a whole-slide image over HTTP
    needs; found when the slide is opened. Not transient: the server's set-up, not a hiccup."""


class MppMissingError(SlideError):
    """A step needs physical pixel size but the slide has none and no override was given."""


class ModelError(WsiSegmentError):
    """A model folder is missing, incomplete, unsafe or does not match its JSON."""


class GraphNotExpressible(ModelError):
    """The model's graph cannot be exported to an optimised runtime (OpenVINO); the reason
    is the message. A run that did not name the runtime falls back to torch and says why."""


class RuntimeUnavailable(WsiSegmentError):
    """An optimised runtime (OpenVINO) cannot be imported, or cannot compile or load a graph
    on this machine; the run falls back to torch and says why."""


class DatasetError(WsiSegmentError):
    """A training/evaluation dataset folder is malformed."""


class ConfigError(WsiSegmentError):
    """A parameter is out of range or inconsistent."""


class OutputError(WsiSegmentError):
    """Outputs cannot be written (permissions, disk full, locked by another run)."""


class OutputBusy(OutputError):
    """Another run holds the slide's output lock: tonight's failure says nothing of the
    slide, whose folder (finished or being written by that run) the report shows instead."""


class OrchestrationError(WsiSegmentError):
    """Prefect's server failed under a batch (its database full, its process gone): the
    run's record is lost, not its outputs (`flows.server_failure`)."""


class OutOfMemory(WsiSegmentError):
    """An allocation failed, or the address-space limit is below what a run needs (refused
    before it). The message names the limit and the fix (`wsi_segment.address_space`). Not
    a `SlideError`: a batch never records it as a known failure."""


class TooManyOpenFiles(WsiSegmentError):
    """The process may not open the files a run needs: refused before the run when even the
    hard open-file limit is too low, or met during it (EMFILE: this process's limit; ENFILE:
    the machine's table). The message names the limit and the fix (`wsi_segment.open_files`).
    Not a `SlideError`: the slide is not at fault, so a batch never records it as a known
    failure; not transient (`wsi.retries.is_transient`): a retry in the same process, which
    still holds what filled the table, meets the same limit."""


class RoiError(ConfigError):
    """A `--roi` file is missing, unreadable, holds no area annotation, or has a region off
    the slide. A usage error: the CLI exits 2 for it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, schedulers, Docker and Kubernetes send) or SIGHUP (the
    terminal or ssh session went away) turned into the exception Ctrl-C raises, so it takes
    the same cleanup path: every `finally`, every wait that survives an interrupt, the
    partial folder and lock removed. Not a `WsiSegmentError`: a batch must stop on it, not
    record a failed slide and go on. `signum`: the signal (the CLI exits 128 + signum)."""

    def __init__(self, message: str = "terminated", signum: int = TERMINATING_SIGNALS[0]) -> None:
        super().__init__(message)
        self.signum = signum

    def __reduce__(self) -> tuple[object, ...]:  # the signal survives a trip between processes
        return (type(self), (str(self), self.signum))

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @classmethod
    def by(cls, signum: int) -> Terminated:
        """The exception of signal `signum`."""
        return cls(f"terminated by signal {signum}", signum)


def signal_exception(signum: int) -> KeyboardInterrupt:
    """What a stopping signal raises: `Terminated` for SIGTERM and SIGHUP (the CLI exits
    128 + the signal), Ctrl-C's KeyboardInterrupt for SIGINT (exit 130)."""
    return Terminated.by(signum) if signum in TERMINATING_SIGNALS else KeyboardInterrupt()


def raise_terminated(signum: int, frame: object) -> None:
    """The handler of `TERMINATING_SIGNALS` (`signal.signal(signum, raise_terminated)`)."""
    raise Terminated.by(signum)


def handled_signals(handler: Any, signals: Sequence[int] = STOPPING_SIGNALS) -> dict[int, Any]:
    """Install `handler` for each of `signals` this process does not ignore (one it inherited
    as ignored stays ignored: `nohup`'s SIGHUP, a background job's SIGINT); the previous
    handlers, to give back with `restore_handlers`."""
    return {
        signum: signal.signal(signum, handler)
        for signum in signals
        if signal.getsignal(signum) is not signal.SIG_IGN
    }


def restore_handlers(previous: dict[int, Any]) -> None:
    """Give back the handlers `handled_signals` replaced (one not set from Python: the
    default action)."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


class SlideStopped(BaseException):
    """A slide's run was stopped from outside through its cancellation token
    (`wsi_segment.pipeline.cancellation`), raised by the slide's own code where it checks the
    token. A `BaseException`, as Ctrl-C's is: no `except Exception` on the way turns a stop
    into a slide failure of another kind, and every `finally` cleans up as on any error."""


class SlideTimedOut(SlideStopped):
    """The slide ran longer than the batch's `slide_timeout`."""


class SlideInterrupted(SlideStopped):
    """The batch was interrupted (Ctrl-C, SIGTERM, SIGHUP) while this slide ran."""


class SlideNotStarted(SlideStopped):
    """The batch was interrupted before this slide started: it does not start."""


class BandAborted(SlideStopped):
    """The slide failed in another of its Dask bands: this band stops, or never starts."""


class PlanMismatch(ConfigError):
    """A Dask worker decides one of a slide's cluster-wide decisions (runtime, precision,
    chunk size) otherwise than the plan the client shipped to it: the worker is unlike the
    one whose machine the plan was decided for (a cluster of unlike workers). The band refuses to run rather than mix two answers in
    one slide; the message names the decision, both values and the fix."""


# Signals between two modules of one layer. Each is caught by the module named in its
# docstring and turned there into a decision or into one of the errors above: none reaches
# the user as it is, so none is a `WsiSegmentError`.


class NotStreamable(Exception):
    """A ROI file's stream does not open like a QuPath export: `wsi.roi_stream.stream_objects`
    raises it before yielding anything, and `wsi.roi_file` then reads the file whole, as any
    GeoJSON (other tools' exports, older QuPath files, bare geometries). Not a failure."""


class BrokenExport(ValueError):
    """A QuPath export streamed by `wsi.roi_stream` is not valid JSON where an object or the
    file's end was expected (the message says where, by byte); `wsi.roi_file` raises it again
    as a `RoiError` naming the file and the fix."""


class JpegHeaderError(ValueError):
    """The bytes are not a JPEG stream `wsi.jpeg_header` can read up to its first scan;
    `wsi.raw_tiles` then leaves the level to the ordinary decoder (its `Unsupported` reason
    quotes the message)."""
