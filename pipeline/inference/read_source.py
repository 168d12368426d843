"""What feeds the engine: a read source turns a slide's chunks into batches of tiles.

The engine (`pipeline.inference.engine.run_engine`) does not know where tiles come from.
It hands a source the chunks, the batch size and the `staged` queue, and runs the threads
the source returns beside its own compute and writer threads; the source puts batches of
tiles on the model's device (`StagedBatch`, tiles of several chunks in one batch) on the
queue, then None. Three sources exist:

- `ReaderThread(HostTiles(...))` (`pipeline.inference.reader_thread`): one thread reads
  each chunk with the slide library and cuts its tiles: any slide, the CPU default.
- `ReaderThread(DeviceTiles(...))`: the same thread decoding the slide's JPEG tiles on the
  model's device (`pipeline.inference.device_tiles`), where the slide allows it.
- `DecoderProcesses(n)` (`pipeline.inference.decoder_reads`): n spawned processes read
  shares of the chunks into shared memory, a stager thread batches them.

A source reports its errors (a damaged tile: a `SlideError` naming the file and the fix)
to the run's `FirstError` and checks `FirstError.stopped` while it waits; the engine handles
the abort, the progress and the first error once for all of them, and calls `close` on
every path after its threads have ended.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Protocol

from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError, Part
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.chunk_job import SlideJob
    from wsi_segment.pipeline.inference.device_consumer import StagedBatch


class ReadSource(Protocol):
    """Reads a run's chunks into batches on the model's device (see the module docstring)."""

    @property
    def processes(self) -> int:
        """Decoder processes the source runs (0: it reads in this process)."""
        ...

    def parts(
        self,
        job: SlideJob,
        specs: list[ChunkSpec],
        batch: int,
        staged: queue.Queue[StagedBatch | None],
        errors: FirstError,
        stats: EngineStats,
    ) -> list[Part]:
        """The thread bodies that fill `staged` with every chunk that has tiles, in
        batches of `batch` tiles, then put None. Called once per run."""
        ...

    def close(self) -> None:
        """Release what the source holds (processes, shared memory, file handles);
        idempotent, called on every path once the parts have ended."""
        ...
