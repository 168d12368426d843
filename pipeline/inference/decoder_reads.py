"""The decoder-process read source: N spawned decoders fill shared-memory slots, one thread
batches them.

The stager thread takes decoded chunks as they come, copies them into batches (`Stager`) and
frees each slot once copied; a decoder's error, or one that died without a word, stops the
run. Decoders spawned early (`DecodePool`, while tissue is detected) are adopted and closed
like its own.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from wsi_segment.errors import DecoderDied
from wsi_segment.pipeline.inference.compute_stage import ChunkTiles, Stager
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.decoder_link import Decoded, Failed, Finished
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError, Part, Stopped

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.engine import SourceRun


class DecoderProcesses:
    """A read source (`pipeline.inference.engine.ReadSource`) of `decoders` spawned processes."""

    def __init__(self, decoders: int, pool: DecodePool | None = None) -> None:
        """`pool`: decoders already started for this run (adopted, and closed whatever
        happens; one started for other chunks or another count is closed and replaced)."""
        self.decoders = max(1, decoders)
        self._pool = pool

    @property
    def processes(self) -> int:
        return self.decoders

    def parts(self, run: SourceRun) -> list[Part]:
        job, pool = run.job, self._pool
        if pool is not None and not pool.serves(run.specs, self.decoders):
            pool.close()
            pool = self._pool = None
        run.stats.early_decoders = pool is not None
        if pool is None:
            pool = self._pool = DecodePool.for_chunks(job.reader, run.specs, self.decoders)
        assert pool.ring is not None
        run.stats.slots = pool.ring.slots
        device = job.model.get().device
        stager = Stager(run.batch, job.grid.tile, torch.device("cpu"), device)
        chunks = _decoded(job.slide_path, pool, run.errors, run.stats)
        return [(stager.run, (chunks, run.staged, run.errors))]

    def close(self) -> None:
        """Join or terminate the decoders, close the pipes, remove the shared memory."""
        if self._pool is not None:
            self._pool.close()


def _decoded(
    slide_path: str, pool: DecodePool, errors: FirstError, stats: EngineStats
) -> Iterator[ChunkTiles]:
    """The chunks the decoders report, in their slots, until every decoder finished; each
    slot goes back to them once its tiles are copied. A decoder's error, or one that died
    without a word (killed for memory, a crash in a codec), stops the run."""
    assert pool.ring is not None
    ring, finished = pool.ring, set[int]()
    while len(finished) < len(pool.procs):
        if errors.stopped:
            raise Stopped
        msg = pool.receive(timeout=0.1)
        if msg is None:
            for d, proc in enumerate(pool.procs):
                if d not in finished and proc.exitcode not in (None, 0):
                    errors.report(_died(slide_path, proc.exitcode))
            continue
        if isinstance(msg, Decoded):
            stats.chunk_arrived()
            tiles = torch.from_numpy(ring.view(msg.slot, msg.tiles))
            yield ChunkTiles(msg.index, tiles, functools.partial(pool.release, msg.slot))
        elif isinstance(msg, Finished):
            finished.add(msg.decoder)
        elif isinstance(msg, Failed):
            errors.report(msg.error)


def _died(slide_path: str, code: int) -> DecoderDied:
    return DecoderDied(
        f"{slide_path}: a decoder process died (exit code {code}) while reading this "
        "slide; the file may be damaged there (re-scan or re-export it), or the machine ran "
        "out of memory (pass fewer --decoders)"
    )
