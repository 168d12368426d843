"""The device engine: N decoder processes -> shared-memory slots -> one device consumer -> writer.

    decoders (spawned processes)   read a band of chunks each, cut tiles into a free slot
        | (slot, chunk, tiles) on a queue; slots come back on the free-slot queue
    stager + compute (threads)     batches across chunks, staged and copied to the device,
        |                          `predict_reduced` back to back by the model's one owner
    writer (threads)               stitch, write the zarr chunks, summarise, per whole chunk

This thread supervises: it forwards decoded chunks to the stager and watches every part.
The first error (a decoder's SlideError, the model's, the writer's) wins and stops the rest.
`run_engine` never returns or raises while a part may still write into the zarr store (the
caller then removes the partial folder), and on every path (success, error, interrupt) it
joins or terminates the decoders and removes the shared memory. The decoders may have been
spawned before tissue detection (`DecodePool`, handed in by `pipeline.segment.infer`); the
engine then adopts them, and closes them like its own.

With `reads` (the device read path, `pipeline.inference.device_reader`), one reader thread
reading onto the model's device replaces the decoders and the stager; compute and writer
are the same.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from wsi_segment.errors import SlideError
from wsi_segment.pipeline.inference.chunk_job import SlideJob, device_batch_size
from wsi_segment.pipeline.inference.chunk_writer import ChunkWriter
from wsi_segment.pipeline.inference.decode_pool import (
    Decoded,
    DecodePool,
    Failed,
    Finished,
    Message,
    SlotRing,
    wait_uninterrupted,
)
from wsi_segment.pipeline.inference.engine_state import (
    EngineAborted,
    EngineStats,
    FirstError,
    Part,
    join_parts,
    start_parts,
)
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.params import run_writers
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:  # the consumer imports torch: loaded when an engine runs
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue

    from wsi_segment.pipeline.inference.chunk_writer import TileBatch
    from wsi_segment.pipeline.inference.device_consumer import DeviceConsumer, StagedBatch
    from wsi_segment.pipeline.inference.device_tiles import DeviceTiles

    MakeConsumer = Callable[[SlotRing | None, Callable[[int], None]], DeviceConsumer]


def run_engine(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    decoders: int,
    progress: Progress | None = None,
    stats: EngineStats | None = None,
    pool: DecodePool | None = None,
    abort: threading.Event | None = None,
    writers: int | None = None,
    reads: DeviceTiles | None = None,
) -> list[ChunkOutcome]:
    """Run every chunk through the engine; outcomes in `specs` order.

    `writers`: threads finishing whole chunks side by side (default
    `pipeline.params.run_writers`: the cores the decoders leave, 1 to 4).
    `pool`: decoders already started for these chunks (adopted, and closed whatever
    happens; one started for other chunks or another count is closed and replaced).
    `stats` (optional) receives what the run did (batches and the chunks each held, bytes
    that crossed from the device). `abort` (optional): set by someone else (a Dask band
    whose slide failed elsewhere) to stop the run; it then raises `EngineAborted`.
    `reads`: read the chunks onto the model's device instead (adopted and closed too; a
    pool is then closed unused; `abort` is not watched on that path, which bands never take)."""
    started = time.perf_counter()
    specs = list(specs)
    try:
        if pool is not None and (reads is not None or not pool.serves(specs, decoders)):
            pool.close()
            pool = None
        if not specs:
            return []
        writers = run_writers(writers, decoders)
        return _run_engine(
            job, specs, decoders, progress, stats, pool, started, abort, writers, reads
        )
    finally:
        if pool is not None:
            pool.close()
        if reads is not None:
            reads.close()


def _run_engine(
    job: SlideJob,
    specs: list[ChunkSpec],
    decoders: int,
    progress: Progress | None,
    stats: EngineStats | None,
    pool: DecodePool | None,
    started: float,
    abort: threading.Event | None,
    writers: int,
    reads: DeviceTiles | None,
) -> list[ChunkOutcome]:
    from wsi_segment.pipeline.inference.device_consumer import DeviceConsumer  # torch

    progress = progress or NullProgress()
    stats = stats if stats is not None else EngineStats()
    model, lock = job.model.get()
    batch = device_batch_size(model, lock, job.grid.tile, job.batch_size)
    stats.decoders, stats.batch_size, stats.writers = decoders, batch, writers
    writer = ChunkWriter(job, specs, progress, writers)
    errors = FirstError()

    def consumer(ring: SlotRing | None, release: Callable[[int], None]) -> DeviceConsumer:
        return DeviceConsumer(model, lock, job.grid, batch, job.gate, ring, release, errors, stats)

    if reads is not None:  # the device read path: a reader thread, no decoders, no stager
        from wsi_segment.pipeline.inference.device_reader import run_device_reads

        stats.decoders = 0
        make = functools.partial(consumer, None, _no_slots)
        run_device_reads(reads, specs, make, batch, writer, errors, stats, started)
    else:
        _run(job, specs, decoders, pool, consumer, writer, errors, stats, started, abort)
    if errors.error is not None:
        # The frames of the parts are done: drop their locals so nothing outlives the run,
        # keeping the lines for a traceback.
        traceback.clear_frames(errors.error.__traceback__)
        raise errors.error
    return writer.results()


def _no_slots(slot: int) -> None:
    """The device read path's consumer has no slot ring to release into."""


def _run(
    job: SlideJob,
    specs: list[ChunkSpec],
    decoders: int,
    pool: DecodePool | None,
    make_consumer: MakeConsumer,
    writer: ChunkWriter,
    errors: FirstError,
    stats: EngineStats,
    started: float,
    abort: threading.Event | None = None,
) -> None:
    """Start every part (the decoders unless `pool` holds them), supervise, shut down.
    Errors (an interrupt included) end up in `errors`; the pool is closed here."""
    threads: list[threading.Thread] = []
    stats.early_decoders = pool is not None
    try:
        if pool is None:
            pool = DecodePool.for_chunks(job.reader, specs, decoders)
        assert pool.ring is not None
        stats.slots = pool.ring.slots
        consumer = make_consumer(pool.ring, pool.free.put)
        inbox: queue.Queue[Decoded | None] = queue.Queue()
        staged: queue.Queue[StagedBatch | None] = queue.Queue(maxsize=1)
        written: queue.Queue[TileBatch | None] = queue.Queue(maxsize=4)
        bodies: list[Part] = [
            (consumer.stage, (inbox, staged)),
            (consumer.compute, (staged, written)),
            (writer.run, (written, errors)),
        ]
        del consumer
        start_parts(bodies, threads)
        del bodies
        _supervise(job, pool.procs, pool.results, inbox, errors, stats, started, abort)
        inbox.put(None)  # every chunk decoded: flush the last batch, then the writer ends
        join_parts(threads)
    except BaseException as exc:  # an interrupt too: cleaned up here, re-raised by the caller
        errors.report(exc)
    finally:
        _shut_down(errors, threads, pool)


def _supervise(
    job: SlideJob,
    procs: list[BaseProcess],
    results: Queue[Message],
    inbox: queue.Queue[Decoded | None],
    errors: FirstError,
    stats: EngineStats,
    started: float,
    abort: threading.Event | None = None,
) -> None:
    """Forward decoded chunks until every decoder finished; a decoder's error, one that
    died without a word (killed for memory, a crash in a codec), or `abort` stops the run."""
    finished: set[int] = set()
    while len(finished) < len(procs) and not errors.stopped:
        if abort is not None and abort.is_set():
            errors.report(EngineAborted(f"{job.slide_path}: the run was asked to stop"))
            return
        try:
            msg = results.get(timeout=0.1)
        except queue.Empty:
            for d, proc in enumerate(procs):
                if d not in finished and proc.exitcode not in (None, 0):
                    errors.report(_died(job, proc.exitcode))
            continue
        if isinstance(msg, Decoded):
            if not stats.first_chunk_s:
                stats.first_chunk_at = time.perf_counter()
                stats.first_chunk_s = stats.first_chunk_at - started
            inbox.put(msg)
        elif isinstance(msg, Finished):
            finished.add(msg.decoder)
        elif isinstance(msg, Failed):
            errors.report(msg.error)


def _died(job: SlideJob, code: int) -> SlideError:
    return SlideError(
        f"{job.slide_path}: a decoder process died (exit code {code}) while reading this "
        "slide; the file may be damaged there (re-scan or re-export it), or the machine ran "
        "out of memory (pass fewer --decoders)"
    )


def _shut_down(
    errors: FirstError, threads: list[threading.Thread], pool: DecodePool | None
) -> None:
    """Stop every part and wait for it: threads first (the writer may be mid-chunk), then
    the decoders (`DecodePool.close`: joined or terminated, queues and shared memory
    removed). Runs on every path; a second interrupt here does not skip the cleanup."""
    if errors.error is not None or any(t.is_alive() for t in threads):
        errors.stop()
    if pool is not None and pool.stop is not None:
        pool.stop.set()
    for thread in threads:
        wait_uninterrupted(thread.join)
    if pool is not None:
        pool.close()
