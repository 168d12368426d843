"""The reader-thread read source: one thread reads chunk after chunk and fills batches.

Its reads are `HostTiles` (the slide library on the CPU, any slide; it may adopt a
`TilePrefetcher` that read while the model loaded) or `DeviceTiles` (the slide's JPEG tiles
decoded on the model's device). Memory is bounded by the engine's queues.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from wsi_segment.pipeline.inference.compute_stage import ChunkTiles, StagedBatch, Stager
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError, Part, Stopped
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.wsi.tile_reuse import TileReuse
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.device_tiles import DeviceTiles
    from wsi_segment.pipeline.inference.engine import SourceRun
    from wsi_segment.pipeline.inference.tile_prefetch import TilePrefetcher


class HostTiles:
    """Chunks read with the slide library on the CPU (`TileReader`), any slide; the same
    methods as `DeviceTiles`."""

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
            self._reuse = self.reader.plan_tile_reuse(list(specs))

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

    def __init__(self, reads: HostTiles | DeviceTiles) -> None:
        self.reads = reads

    @property
    def processes(self) -> int:
        return 0

    def parts(self, run: SourceRun) -> list[Part]:
        self.reads.plan_reuse(run.specs)
        stager = Stager(run.batch, run.job.grid.tile, self.reads.device, self.reads.device)
        chunks = self._chunks(run.specs, run.errors, run.stats)
        return [(self._run, (stager, chunks, run.staged, run.errors))]

    def close(self) -> None:
        self.reads.close()

    def _run(
        self,
        stager: Stager,
        chunks: Iterable[ChunkTiles],
        staged: queue.Queue[StagedBatch | None],
        errors: FirstError,
    ) -> None:
        """Thread body: every chunk's tiles, batched on the device they are read onto, then
        None; errors go to `errors`."""
        try:
            stager.run(chunks, staged, errors)
        finally:
            self.reads.thread_done()

    def _chunks(
        self, specs: list[ChunkSpec], errors: FirstError, stats: EngineStats
    ) -> Iterator[ChunkTiles]:
        """The tiles of each chunk with tissue tiles, read in plan order."""
        for index, spec in enumerate(specs):
            if not spec.tiles:
                continue  # the writer writes chunks without tissue tiles itself
            if errors.stopped:
                raise Stopped
            tiles = self.reads.read_chunk(spec)
            stats.chunk_arrived()
            yield ChunkTiles(index, tiles)
