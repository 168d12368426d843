"""The decoder-process read source: N spawned decoders fill shared-memory slots, a stager
thread batches them.

    decoders (spawned processes)   read a share of the chunks each, cut tiles into a free slot
        | (slot, chunk, tiles) on a queue; slots come back on the free-slot queue
    supervisor (thread)            forwards decoded chunks; a decoder's error, or one that
        |                          died without a word, stops the run
    stager (thread)                copies tiles from the slots into one of two reused
                                   staging buffers (pinned on CUDA) until a batch is full,
                                   frees each slot as soon as its tiles are copied, and on
                                   CUDA starts the batch's copy to the device on a side stream

The decoders may have been spawned before tissue detection (`DecodePool`, handed in by
`pipeline.segment.infer`); the source then adopts them, and closes them like its own.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from wsi_segment.errors import DecoderDied
from wsi_segment.pipeline.inference.compute_stage import StagedBatch, batch_takes
from wsi_segment.pipeline.inference.decode_pool import (
    Decoded,
    DecodePool,
    Failed,
    Finished,
    SlotRing,
)
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError, Part
from wsi_segment.pipeline.inference.unit_writer import Segment
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.slide_job import SlideJob


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

    def parts(
        self,
        job: SlideJob,
        specs: list[ChunkSpec],
        batch: int,
        staged: queue.Queue[StagedBatch | None],
        errors: FirstError,
        stats: EngineStats,
    ) -> list[Part]:
        pool = self._pool
        if pool is not None and not pool.serves(specs, self.decoders):
            pool.close()
            pool = self._pool = None
        stats.early_decoders = pool is not None
        if pool is None:
            pool = self._pool = DecodePool.for_chunks(job.reader, specs, self.decoders)
        assert pool.ring is not None
        stats.slots = pool.ring.slots
        stager = _Stager(pool.ring, pool.free.put, batch, job.model.get().model.device)
        inbox: queue.Queue[Decoded | None] = queue.Queue()
        return [
            (_supervise, (job.slide_path, pool, inbox, errors, stats)),
            (stager.run, (inbox, staged, errors)),
        ]

    def close(self) -> None:
        """Join or terminate the decoders, close the queues, remove the shared memory."""
        if self._pool is not None:
            self._pool.close()


def _supervise(
    slide_path: str,
    pool: DecodePool,
    inbox: queue.Queue[Decoded | None],
    errors: FirstError,
    stats: EngineStats,
) -> None:
    """Thread body: forward decoded chunks until every decoder finished (then None); a
    decoder's error, or one that died without a word (killed for memory, a crash in a
    codec), stops the run."""
    finished: set[int] = set()
    try:
        while len(finished) < len(pool.procs) and not errors.stopped:
            try:
                msg = pool.results.get(timeout=0.1)
            except queue.Empty:
                for d, proc in enumerate(pool.procs):
                    if d not in finished and proc.exitcode not in (None, 0):
                        errors.report(_died(slide_path, proc.exitcode))
                continue
            if isinstance(msg, Decoded):
                stats.chunk_arrived()
                inbox.put(msg)
            elif isinstance(msg, Finished):
                finished.add(msg.decoder)
            elif isinstance(msg, Failed):
                errors.report(msg.error)
        inbox.put(None)  # every chunk decoded: the stager flushes its last batch
    except BaseException as exc:
        errors.report(exc)


def _died(slide_path: str, code: int) -> DecoderDied:
    return DecoderDied(
        f"{slide_path}: a decoder process died (exit code {code}) while reading this "
        "slide; the file may be damaged there (re-scan or re-export it), or the machine ran "
        "out of memory (pass fewer --decoders)"
    )


class _Stager:
    """Copies decoded chunks out of the slots into batches of `batch` tiles."""

    def __init__(
        self, ring: SlotRing, release: Callable[[int], None], batch: int, device: torch.device
    ) -> None:
        self._ring, self._release, self._batch, self._device = ring, release, batch, device
        self._cuda = device.type == "cuda" and torch.cuda.is_available()
        shape = (batch, ring.tile, ring.tile, 3)
        self._buffers = [
            torch.empty(shape, dtype=torch.uint8, pin_memory=self._cuda) for _ in range(2)
        ]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(len(self._buffers)):
            self._free.put(i)
        self._side = torch.cuda.Stream(device) if self._cuda else None

    def run(
        self,
        inbox: queue.Queue[Decoded | None],
        staged: queue.Queue[StagedBatch | None],
        errors: FirstError,
    ) -> None:
        """Thread body: decoded chunks -> full batches (None ends both)."""
        ring = self._ring
        k: int | None = None  # the staging buffer being filled
        segments: list[Segment] = []
        filled = 0
        try:
            for take in batch_takes(self._decoded(inbox, errors), self._batch):
                if k is None:
                    k = errors.get(self._free)
                host = self._buffers[k].numpy()
                view = ring.view(take.payload.slot, take.payload.tiles)
                host[take.at : take.at + take.count] = view[take.first : take.first + take.count]
                segments.append(take.segment)
                filled = take.at + take.count
                if take.ends_chunk:
                    self._release(take.payload.slot)  # copied: the decoders may refill it
                if take.ends_batch:
                    errors.put(staged, self._transfer(k, filled, segments))
                    k, segments = None, []
            if k is not None:
                errors.put(staged, self._transfer(k, filled, segments))
            errors.put(staged, None)
        except BaseException as exc:  # Stopped included: report ignores it
            errors.report(exc)

    @staticmethod
    def _decoded(
        inbox: queue.Queue[Decoded | None], errors: FirstError
    ) -> Iterator[tuple[int, int, Decoded]]:
        """(index, tiles, where they are) of each decoded chunk, as the supervisor forwards them."""
        while (chunk := errors.get(inbox)) is not None:
            yield chunk.index, chunk.tiles, chunk

    def _transfer(self, k: int, n: int, segments: list[Segment]) -> StagedBatch:
        """Start the batch's copy to the device (CUDA: asynchronous, on the side stream)."""
        host = self._buffers[k][:n]

        def release() -> None:
            self._free.put(k)

        if not self._cuda:
            return StagedBatch(host, segments, None, release)
        with torch.cuda.stream(self._side):
            tiles = host.to(self._device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._side)
        return StagedBatch(tiles, segments, ready, release)
