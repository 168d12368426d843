"""What the parts of the engine share: the first error, the stop, and run statistics.

Each part reports its error here and checks `stopped` while it waits: one failure stops all."""

from __future__ import annotations

import contextlib
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from wsi_segment.pipeline.threads import WaitableThread

T = TypeVar("T")


class Stopped(Exception):
    """Raised inside a part that was waiting when the run stopped (not an error itself)."""


class FirstError:
    """Holds the first error reported; later ones are echoes of it (or of the stop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None

    def report(self, exc: BaseException) -> None:
        """Record `exc` unless an earlier error is already held, and ask every part to stop."""
        if isinstance(exc, Stopped):
            return
        with self._lock:
            if self.error is None:
                self.error = exc
        self._stop.set()

    def stop(self) -> None:
        """Ask every part to stop (an interrupt, or the engine's own failure)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def get(self, q: queue.Queue[T]) -> T:
        """The next item of `q`; raises Stopped if the run stops while waiting."""
        while not self.stopped:
            with contextlib.suppress(queue.Empty):
                return q.get(timeout=0.05)
        raise Stopped

    def put(self, q: queue.Queue[T], item: T) -> None:
        """Put on a bounded queue; raises Stopped if the run stops while it is full."""
        while not self.stopped:
            with contextlib.suppress(queue.Full):
                q.put(item, timeout=0.05)
                return
        raise Stopped


@dataclass
class EngineStats:
    """What an engine run did and how soon it computed: summary.json's `engine` section of a
    local run (`report`), where a user sees whether start-up or the steady state is slow."""

    decoders: int = 0
    writers: int = 0
    slots: int = 0
    batch_size: int = 0
    chunks_per_batch: list[int] = field(default_factory=list)
    tiles: int = 0
    # time.perf_counter() when the first decoded chunk reached the engine, and when the first
    # batch entered the model (0: not yet): start-up measured from outside `run_engine`
    first_chunk_at: float = 0.0
    early_decoders: bool = False  # the run adopted decoders started before it (DecodePool)
    first_batch_at: float = 0.0
    computes: int = 0  # compute threads (CPU: side by side)

    def chunk_arrived(self) -> None:
        """Note when the first chunk's tiles reached the engine."""
        self.first_chunk_at = self.first_chunk_at or time.perf_counter()

    def report(self, started: float) -> dict[str, Any]:
        """The figures for summary.json, times in seconds after `started` (None: never)."""

        def since(at: float) -> float | None:
            return at - started if at else None

        return {
            "decoders": self.decoders,
            "decoders_started_early": self.early_decoders,
            "ring_slots": self.slots,
            "compute_threads": self.computes,
            "writers": self.writers,
            "batch_size": self.batch_size,
            "forward_passes": len(self.chunks_per_batch),
            "batches_spanning_chunks": sum(n > 1 for n in self.chunks_per_batch),
            "tiles": self.tiles,
            "first_tiles_s": since(self.first_chunk_at),
            "first_forward_s": since(self.first_batch_at),
        }


Part: TypeAlias = tuple[Callable[..., None], tuple[object, ...]]  # a thread body, its args


def start_parts(parts: list[Part], threads: list[WaitableThread]) -> None:
    """Start one daemon thread per part, each appended to `threads` once its start was
    tried, so the caller's cleanup waits for every thread that did start even when a later
    start fails or an interrupt (Ctrl-C, SIGTERM in the main thread) lands inside `start`."""
    for target, args in parts:
        thread = WaitableThread(target, args)
        try:
            thread.start()
        finally:
            threads.append(thread)


def wait_uninterrupted(wait: Callable[..., Any], *args: Any) -> BaseException | None:
    """Wait through exceptions a signal handler raises in this thread, since cleanup that
    stops half way would leak: a second Ctrl-C or SIGTERM is dropped (the first is being
    cleaned up); another non-`Exception` (Prefect's `TerminationSignal`) is returned once
    the wait is over, for the caller to raise after its cleanup. Errors of `wait` propagate."""
    stop: BaseException | None = None
    while True:
        try:
            wait(*args)
            return stop
        except KeyboardInterrupt:
            continue
        except Exception:
            raise
        except BaseException as exc:
            stop = stop or exc


def picklable(exc: BaseException, otherwise: BaseException) -> BaseException:
    """`exc` where it survives a trip through a pipe to another process, else `otherwise`
    (its text as a known error): one that pickles but cannot be rebuilt would fail the
    receiver's `recv` instead of reporting the error."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return otherwise
