"""The reader-thread read source: one thread fills batches from a chunk reader.

Its chunks come from `HostTiles` (pipeline/inference/host_tiles.py: the slide library on the
CPU, any slide, read ahead by a thread of its own) or `DeviceTiles` (the slide's JPEG tiles
decoded on the model's device). Memory is bounded by the engine's queues
and the read-ahead's byte bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from wsi_segment.pipeline.inference.compute_stage import ChunkTiles, Stager
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError, Part, Stopped
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.device_tiles import DeviceTiles
    from wsi_segment.pipeline.inference.engine import SourceRun
    from wsi_segment.pipeline.inference.host_tiles import HostTiles


class ReaderThread:
    """A read source (`pipeline.inference.engine.ReadSource`): one thread reading with `reads`."""

    def __init__(self, reads: HostTiles | DeviceTiles) -> None:
        self.reads = reads

    @property
    def processes(self) -> int:
        return 0

    def parts(self, run: SourceRun) -> list[Part]:
        self.reads.start(run.specs)
        stager = Stager(run.batch, run.job.grid.tile, self.reads.device, self.reads.device)
        chunks = self._chunks(run.specs, run.errors, run.stats)
        return [(stager.run, (chunks, run.staged, run.errors))]

    def close(self) -> None:
        self.reads.close()

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
