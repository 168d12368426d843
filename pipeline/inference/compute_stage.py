"""The engine's compute stage: the one owner of the model, fed batches across chunks.

A read source puts batches of tiles (of several chunks), already on the model's device, on
the `staged` queue; the compute threads run `predict_batch` (`tile_inference`: exactly the
engine's batch size) batch after batch and hand the uint8 outputs to the writer.
On CUDA one compute thread keeps the device busy (the source copies the next batch on a
side stream while this one computes: the batch's `ready` event orders the two). On the CPU
the cores are the bottleneck and a forward pass with all of them spends time in OpenMP
barriers, so `computes` threads run side by side, each with cores // computes torch
threads: a thread that waits for a batch then leaves its cores to the others.

On a GPU a forward pass holds the model's lock. Alone, the compute stage is its only user and
it costs nothing; in a batch (or in the bands a Dask worker runs at once), the slides in
flight share one loaded model per process (`model_handle.load_for_process`) and each runs
a compute stage, so the lock makes it one forward pass at a time per device, the batches
interleaved: side by side they would gain nothing (their kernels queue on the device's one
default stream) and could run the device out of memory, since `LoadedModel.batch_size` sizes a batch
to the memory free for *one* forward pass. On the CPU a compute stage with several compute
threads runs its forward passes side by side without the lock, each with its own few torch
threads (the lock would leave all but one thread's cores idle); one with a single compute
thread takes turns like a GPU's.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from wsi_segment.models.runtimes.graph import Geometry
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError
from wsi_segment.pipeline.inference.tile_inference import predict_batch
from wsi_segment.pipeline.inference.unit_writer import Segment, TileBatch
from wsi_segment.wsi.tiling import TileGrid

if TYPE_CHECKING:
    from wsi_segment.models.runtimes.executor import Executor

T = TypeVar("T")


@dataclass
class StagedBatch:
    """A batch of tiles on (or on its way to) the model's device, and whose tiles they are."""

    tiles: torch.Tensor  # (N, T, T, 3) uint8 on the model's device
    segments: list[Segment]
    ready: torch.cuda.Event | None  # recorded after the copy on a side stream; CPU: None
    release: Callable[[], None] | None = None  # gives the source its buffer back, once used


@dataclass(frozen=True)
class Take(Generic[T]):
    """`count` tiles of one chunk (`index`, with `payload`: what holds its tiles) from its
    tile `first`, for batch positions `at`.. of the batch being filled."""

    index: int
    first: int
    count: int
    at: int
    payload: T
    ends_chunk: bool
    ends_batch: bool

    @property
    def segment(self) -> Segment:
        return (self.index, self.first, self.count)


def batch_takes(chunks: Iterable[tuple[int, int, T]], batch: int) -> Iterator[Take[T]]:
    """The one batch filler of every read source: chunks given as (index, tiles, payload), in
    order, cut into batches of `batch` tiles across chunks, one take at a time (a source
    copies each take, and frees a chunk's memory at its last take, so a batch never waits
    for the memory of the chunks it holds). The last batch ends short; the source flushes it."""
    at = 0
    for index, tiles, payload in chunks:
        done = 0
        while done < tiles:
            count = min(batch - at, tiles - done)
            full = at + count == batch
            yield Take(index, done, count, at, payload, done + count == tiles, full)
            at, done = 0 if full else at + count, done + count


def tile_geometry(grid: TileGrid, gate: bool) -> Geometry:
    """The tile graph's geometry of a run on `grid`: each tile's core, downsampled."""
    return Geometry(grid.tile, grid.margin, grid.stride, grid.downsample, gate)


class ComputeStage:
    """Runs the executor over staged batches in `computes` threads, on whatever device it
    runs on (a GPU or the CPU); outputs to the writer."""

    def __init__(
        self,
        executor: Executor,
        lock: threading.Lock,
        batch: int,
        errors: FirstError,
        stats: EngineStats,
        computes: int,
        locked: bool,
        cpu: bool,
    ) -> None:
        """`computes` and `locked` (forward passes take the model's lock) as the run's plan
        decided them (`pipeline.run_policy`: one locked thread on a GPU; bands of a CPU Dask
        worker unlocked, each on its share of the cores); `cpu`: the model runs on the CPU,
        so each compute thread takes its share of the torch threads."""
        self._executor, self._lock = executor, lock
        self._batch = batch
        self._errors, self._stats = errors, stats
        self.computes = max(1, computes)
        # a new thread starts with OpenMP's default, not the caller's: each sets its own
        self._threads = max(1, torch.get_num_threads() // self.computes) if cpu else 0
        self._locked = locked
        self._running = self.computes
        self._count_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    def compute(
        self, staged: queue.Queue[StagedBatch | None], out: queue.Queue[TileBatch | None]
    ) -> None:
        """Thread body (one of `computes`): forward passes back to back until the source's
        end marker, which it passes on to the next compute thread; the last one to end
        tells the writer (None)."""
        try:
            if self._threads:
                torch.set_num_threads(self._threads)
            while (batch := self._errors.get(staged)) is not None:
                self._errors.put(out, self._forward(batch))
            self._errors.put(staged, None)  # the other compute threads end too
            with self._count_lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._errors.put(out, None)
        except BaseException as exc:
            self._errors.report(exc)

    def _forward(self, batch: StagedBatch) -> TileBatch:
        tiles = batch.tiles
        if batch.ready is not None:  # the copy ran on a side stream: order it before compute
            stream = torch.cuda.current_stream(tiles.device)
            stream.wait_event(batch.ready)
            tiles.record_stream(stream)
        if not self._stats.first_batch_at:
            self._stats.first_batch_at = time.perf_counter()
        lock = self._lock if self._locked else None  # one forward pass at a time per model
        out = predict_batch(self._executor, tiles, self._batch, lock)
        if batch.release is not None:  # the forward pass is done with the source's buffer
            batch.release()
        n = len(tiles)
        stats = self._stats
        with self._stats_lock:
            stats.chunks_per_batch.append(len({index for index, _, _ in batch.segments}))
            stats.tiles += n
            stats.bytes_from_model += out.bytes_from_model
        return TileBatch(batch.segments, out.probs, out.labels, out.bytes_from_model // n)
