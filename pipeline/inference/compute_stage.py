"""The engine's compute stage: the one user of the executor, fed batches across chunks.

A read source's `Stager` batches tiles of several chunks on the model's device; compute
threads run the executor on them back to back, at one fixed batch size, and hand the uint8
outputs to the writer. On CUDA one thread under the model's lock keeps the device busy
(while the stager copies on a side stream); slides sharing a loaded model take turns, since
side by side they would gain nothing and `LoadedModel.batch_size` sizes a batch for one
pass. On the CPU `computes` threads run unlocked, each on its share of the cores (one
waiting for a batch leaves its cores to the others), and a batch is a numpy array: warm
OpenVINO never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_segment.models.runtimes.tile_io import Tiles
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError
from wsi_segment.pipeline.inference.unit_writer import Segment, TileBatch

if TYPE_CHECKING:
    import torch

    from wsi_segment.pipeline.inference.engine import TileExecutor


@dataclass
class StagedBatch:
    """A batch of tiles on (or on its way to) the model's device, and whose tiles they are:
    always the run's batch size, the tiles after those of `segments` zero."""

    tiles: Tiles  # (batch, T, T, 3) uint8 on the model's device
    segments: list[Segment]
    ready: torch.cuda.Event | None  # recorded after the copy on a side stream; CPU: None
    release: Callable[[], None] | None = None  # gives the source its buffer back, once used


def copy_into(dst: Tiles, src: Tiles) -> None:
    """dst[...] = src; host to host through numpy, which copies small uint8 blocks faster
    than torch's parallel copy."""
    if isinstance(dst, np.ndarray):
        dst[...] = np.asarray(src)  # host tiles: numpy, or a CPU tensor (the device path's)
    elif dst.device.type == "cpu":  # a pinned host buffer
        dst.numpy()[...] = np.asarray(src)
    else:
        assert not isinstance(src, np.ndarray), "host tiles reach a device through pinned memory"
        dst.copy_(src)


@dataclass(frozen=True)
class ChunkTiles:
    """A chunk's tiles (N, T, T, 3) uint8 for the `Stager`, its index in the run's specs,
    and what gives their memory back once they are copied."""

    index: int
    tiles: Tiles
    release: Callable[[], None] | None = None


class Stager:
    """Copies chunks' tiles, as they come, into batches of `batch` tiles for the compute
    threads. `source`: where the tiles are; `device`: the model's ("cpu", "cuda:0"). Host
    tiles for a CUDA model go through two reused pinned buffers, copied to the device on a
    side stream where each batch's `ready` event is recorded; tiles on the device are batched
    there; for a CPU model a batch is a new numpy array."""

    def __init__(self, batch: int, tile: int, source: str, device: str) -> None:
        self._batch, self._shape = batch, (batch, tile, tile, 3)
        self._side: Any = None  # the CUDA copies' stream
        self._pinned: queue.Queue[torch.Tensor] | None = None
        self._device: Any = None  # the model's torch.device, a CUDA model's only
        if device != "cpu":
            import torch  # a CUDA model: torch is loaded

            self._device = torch.device(device)
            self._side = torch.cuda.Stream(self._device)
            if source == "cpu":
                self._pinned = queue.Queue()
                for _ in range(2):
                    self._pinned.put(torch.empty(self._shape, dtype=torch.uint8, pin_memory=True))

    def run(
        self,
        chunks: Iterable[ChunkTiles],
        staged: queue.Queue[StagedBatch | None],
        errors: FirstError,
    ) -> None:
        """Thread body: every chunk's tiles on `staged`, batched, then None; errors (those of
        `chunks` too) go to `errors`."""
        buffer: Tiles | None = None
        segments: list[Segment] = []
        at = 0  # tiles in `buffer`
        side: Any = contextlib.nullcontext()
        if self._side is not None:  # this thread's CUDA copies on the side stream
            import torch

            side = torch.cuda.stream(self._side)
        try:
            with side:
                for chunk in chunks:
                    done, n = 0, len(chunk.tiles)
                    while done < n:
                        if buffer is None:
                            buffer = self._buffer(errors)
                        count = min(self._batch - at, n - done)
                        copy_into(buffer[at : at + count], chunk.tiles[done : done + count])
                        segments.append((chunk.index, done, count))
                        at, done = at + count, done + count
                        if done == n and chunk.release is not None:
                            chunk.release()  # copied: the source may reuse its memory
                        if at == self._batch:
                            errors.put(staged, self._staged(buffer, at, segments))
                            buffer, segments, at = None, [], 0
                if buffer is not None:  # the short last batch
                    errors.put(staged, self._staged(buffer, at, segments))
            errors.put(staged, None)
        except BaseException as exc:  # Stopped included: report ignores it
            errors.report(exc)

    def _buffer(self, errors: FirstError) -> Tiles:
        """Where the next batch is assembled."""
        if self._pinned is not None:
            return errors.get(self._pinned)
        if self._device is not None:
            import torch

            return torch.empty(self._shape, dtype=torch.uint8, device=self._device)
        return np.empty(self._shape, np.uint8)

    def _staged(self, buffer: Tiles, n: int, segments: list[Segment]) -> StagedBatch:
        """The batch, its tiles after the first `n` zeroed, for a compute thread (CUDA: its
        copy to the device started on the side stream)."""
        buffer[n:] = 0
        if self._side is None:
            return StagedBatch(buffer, segments, None)
        import torch

        assert not isinstance(buffer, np.ndarray), "a CUDA model's batches are torch's"
        tiles, release = buffer, None
        if self._pinned is not None:
            tiles = buffer.to(self._device, non_blocking=True)
            release = functools.partial(self._pinned.put, buffer)
        ready = torch.cuda.Event()
        ready.record(self._side)
        return StagedBatch(tiles, segments, ready, release)


class ComputeStage:
    """Runs the executor over staged batches in `computes` threads (the plan's, each on its
    `compute_threads_cores`); outputs to the writer."""

    def __init__(
        self, executor: TileExecutor, errors: FirstError, stats: EngineStats, computes: int
    ) -> None:
        self._executor = executor
        self._errors, self._stats = errors, stats
        self.computes = max(1, computes)
        self._running = self.computes
        self._lock = threading.Lock()  # the count of running threads, and `stats`

    def compute(
        self, staged: queue.Queue[StagedBatch | None], out: queue.Queue[TileBatch | None]
    ) -> None:
        """Thread body: forward passes until the end marker, which it passes on to the next
        compute thread; the last one to end tells the writer (None)."""
        try:
            while (batch := self._errors.get(staged)) is not None:
                self._errors.put(out, self._forward(batch))
            self._errors.put(staged, None)  # the other compute threads end too
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._errors.put(out, None)
        except BaseException as exc:
            self._errors.report(exc)

    def _forward(self, batch: StagedBatch) -> TileBatch:
        tiles, n = batch.tiles, sum(count for _index, _start, count in batch.segments)
        if batch.ready is not None:  # the copy ran on a side stream: order it before compute
            import torch  # a CUDA model's batch

            assert not isinstance(tiles, np.ndarray), "a CUDA model's batches are torch's"
            stream = torch.cuda.current_stream(tiles.device)
            stream.wait_event(batch.ready)
            tiles.record_stream(stream)
        self._stats.first_batch_at = self._stats.first_batch_at or time.perf_counter()
        # Every forward pass has exactly `batch` tiles (a short batch zero-filled, the
        # padding's outputs dropped): oneDNN and cuDNN pick kernels and accumulation orders by
        # the input's shape, so a tile in batches of 3 and 16 may differ by an ulp and a slide
        # would give other bytes from run to run. The models we ship compute each sample alone
        # (test_fixed_batch.py).
        out = self._executor.run(tiles)
        if batch.release is not None:  # the forward pass is done with the source's buffer
            batch.release()
        per_tile = out.nbytes // self._executor.batch
        with self._lock:
            self._stats.chunks_per_batch.append(len({index for index, _, _ in batch.segments}))
            self._stats.tiles += n
        return TileBatch(batch.segments, out.probs[:n], out.labels[:n], per_tile)


def compute_threads_cores(cores: int, computes: int) -> int:
    """The CPU cores each of `computes` compute threads runs its forward passes on."""
    return max(1, cores // max(1, computes))
