"""The reader-thread read source: one thread reads chunk after chunk and fills batches.

    reader (thread)    walks the chunks in plan order, gets each chunk's tiles from its
                       `TileReads` and fills batches across chunks (`batch_takes`), then None

Two kinds of `TileReads`: `HostTiles` reads with the slide library (`TileReader`, storage
tiles shared between chunks: `wsi.tile_reuse`), on the CPU, any slide; it may take chunk
tiles a `TilePrefetcher` started reading while the model loaded. `DeviceTiles`
(`pipeline.inference.device_tiles`) decodes the slide's JPEG tiles on the model's device.
On CUDA the thread works on a side stream and records each batch's `ready` event there, so
the next batch is assembled while this one computes; on the CPU the same code runs without
streams. Memory is bounded by the engine's queues: one batch being filled, one waiting,
one per compute thread.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from wsi_segment.pipeline.inference.compute_stage import StagedBatch, batch_takes
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError, Part, Stopped
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.inference.unit_writer import Segment
from wsi_segment.wsi.tile_reuse import TileReuse
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.slide_job import SlideJob
    from wsi_segment.pipeline.inference.tile_prefetch import TilePrefetcher


class TileReads(Protocol):
    """Reads one chunk's tiles at a time, in the reader thread."""

    @property
    def device(self) -> torch.device: ...

    def plan_reuse(self, specs: Sequence[ChunkSpec]) -> None:
        """Get ready to read these chunks (share storage tiles between them)."""
        ...

    def read_chunk(self, spec: ChunkSpec) -> torch.Tensor:
        """(len(spec.tiles), T, T, 3) uint8 on `device`; a damaged tile raises SlideError."""
        ...

    def thread_done(self) -> None:
        """The reader thread reads no more: close what it opened."""
        ...

    def close(self) -> None: ...


class HostTiles:
    """Chunks read with the slide library on the CPU (`TileReader`), any slide."""

    def __init__(self, reader: TileReader, prefetch: TilePrefetcher | None = None) -> None:
        """`prefetch`: a prefetcher reading these chunks already (adopted and closed; its
        read seconds go into summary.json)."""
        self.reader, self.prefetch = reader, prefetch
        self._reuse: TileReuse | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def tile_reuse(self) -> TileReuse | None:
        """The storage-tile reuse of the run (the prefetcher's when it read)."""
        return self.prefetch.tile_reuse if self.prefetch is not None else self._reuse

    def plan_reuse(self, specs: Sequence[ChunkSpec]) -> None:
        if self.prefetch is not None and not self.prefetch.serves(specs):
            self.prefetch.close()
            self.prefetch = None
        if self.prefetch is None:
            try:
                self._reuse = self.reader.plan_tile_reuse(list(specs))
            except Exception:  # reading works without reuse; read errors surface on read
                self._reuse = None

    def read_chunk(self, spec: ChunkSpec) -> torch.Tensor:
        prefetch = self.prefetch
        if prefetch is None:
            return torch.from_numpy(self.reader.read_tiles(spec, self._reuse))
        tiles = prefetch.take(spec)
        return torch.from_numpy(tiles if tiles is not None else prefetch.read_here(spec))

    def thread_done(self) -> None:
        self.reader.close_local()

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()


class ReaderThread:
    """A read source (`pipeline.inference.engine.ReadSource`): one thread reading with `reads`."""

    def __init__(self, reads: TileReads) -> None:
        self.reads = reads

    @property
    def processes(self) -> int:
        return 0

    def parts(
        self,
        job: SlideJob,
        specs: list[ChunkSpec],
        batch: int,
        staged: queue.Queue[StagedBatch | None],
        errors: FirstError,
        stats: EngineStats,
    ) -> list[Part]:
        self.reads.plan_reuse(specs)
        return [(self._run, (specs, batch, staged, errors, stats))]

    def close(self) -> None:
        self.reads.close()

    def _run(
        self,
        specs: list[ChunkSpec],
        batch: int,
        staged: queue.Queue[StagedBatch | None],
        errors: FirstError,
        stats: EngineStats,
    ) -> None:
        """Thread body: every chunk's tiles, batched, then None; errors go to `errors`."""
        device = self.reads.device
        side = torch.cuda.Stream(device) if device.type == "cuda" else None
        parts: list[torch.Tensor] = []
        segments: list[Segment] = []
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for take in batch_takes(self._chunks(specs, errors, stats), batch):
                    parts.append(take.payload[take.first : take.first + take.count])
                    segments.append(take.segment)
                    if take.ends_batch:
                        errors.put(staged, _staged(parts, segments, side))
                        parts, segments = [], []
                if segments:
                    errors.put(staged, _staged(parts, segments, side))
                errors.put(staged, None)
        except BaseException as exc:  # Stopped included: report ignores it
            errors.report(exc)
        finally:
            self.reads.thread_done()

    def _chunks(
        self, specs: list[ChunkSpec], errors: FirstError, stats: EngineStats
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(index, tiles, the tiles) of each chunk with tissue tiles, read in plan order."""
        for index, spec in enumerate(specs):
            if not spec.tiles:
                continue  # the writer writes chunks without tissue tiles itself
            if errors.stopped:
                raise Stopped
            tiles = self.reads.read_chunk(spec)
            stats.chunk_arrived()
            yield index, len(tiles), tiles


def _staged(
    parts: list[torch.Tensor], segments: list[Segment], side: torch.cuda.Stream | None
) -> StagedBatch:
    """One batch from the parts (copied into one tensor: the parts are views of their
    chunks' tiles), ready for a compute thread."""
    if side is None:  # numpy concatenates uint8 far faster than torch on the CPU
        if len(parts) == 1:
            return StagedBatch(parts[0], segments, None)
        return StagedBatch(torch.from_numpy(np.concatenate([p.numpy() for p in parts])),
                           segments, None)  # fmt: skip
    tiles = torch.cat(parts)
    ready = torch.cuda.Event()
    ready.record(side)
    return StagedBatch(tiles, segments, ready)
