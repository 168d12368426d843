"""The device engine: N decoder processes -> shared-memory slots -> one device consumer -> writer.

    decoders (spawned processes)   read a band of chunks each, cut tiles into a free slot
        | (slot, chunk, tiles) on a queue; slots come back on the free-slot queue
    stager + compute (threads)     batches across chunks, staged and copied to the device,
        |                          `predict_reduced` back to back by the model's one owner
    writer (thread)                stitch, write the zarr chunks, summarise, per whole chunk

This thread supervises: it forwards decoded chunks to the stager and watches every part.
The first error (a decoder's SlideError, the model's, the writer's) wins and stops the rest.
`run_engine` never returns or raises while a part may still write into the zarr store (the
caller then removes the partial folder), and on every path (success, error, interrupt) it
joins or terminates the decoders and removes the shared memory.
"""

from __future__ import annotations

import contextlib
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
    Failed,
    Finished,
    Message,
    SlotRing,
    ring_slots,
    spawn_context,
    start_decoders,
)
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:  # the consumer imports torch: loaded when an engine runs
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from wsi_segment.pipeline.inference.chunk_writer import TileBatch
    from wsi_segment.pipeline.inference.device_consumer import DeviceConsumer, StagedBatch

    MakeConsumer = Callable[[SlotRing, Callable[[int], None]], DeviceConsumer]

JOIN_S = 5.0  # a decoder asked to stop finishes its current read first


def run_engine(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    decoders: int,
    progress: Progress | None = None,
    stats: EngineStats | None = None,
) -> list[ChunkOutcome]:
    """Run every chunk through the engine; outcomes in `specs` order.

    `stats` (optional) receives what the run did (batches and the chunks each held, bytes
    that crossed from the device)."""
    from wsi_segment.pipeline.inference.device_consumer import DeviceConsumer  # torch

    started = time.perf_counter()
    specs = list(specs)
    progress = progress or NullProgress()
    stats = stats if stats is not None else EngineStats()
    if not specs:
        return []
    model, lock = job.model.get()
    tile = job.grid.tile
    batch = device_batch_size(model, lock, tile, job.batch_size)
    slot_tiles = max(1, max(len(s.tiles) for s in specs))
    slots = ring_slots(decoders, slot_tiles * tile * tile * 3)
    stats.decoders, stats.slots, stats.batch_size = decoders, slots, batch
    writer = ChunkWriter(job, specs, progress)
    errors = FirstError()

    def consumer(ring: SlotRing, release: Callable[[int], None]) -> DeviceConsumer:
        return DeviceConsumer(model, lock, job.grid, batch, job.gate, ring, release, errors, stats)

    _run(job, specs, decoders, (slots, slot_tiles), consumer, writer, errors, stats, started)
    if errors.error is not None:
        # The frames of the parts (their queues hold named semaphores in /dev/shm) are done:
        # drop their locals so nothing outlives the run, keeping the lines for a traceback.
        traceback.clear_frames(errors.error.__traceback__)
        raise errors.error
    return writer.results()


def _run(
    job: SlideJob,
    specs: list[ChunkSpec],
    decoders: int,
    ring_shape: tuple[int, int],
    make_consumer: MakeConsumer,
    writer: ChunkWriter,
    errors: FirstError,
    stats: EngineStats,
    started: float,
) -> None:
    """Start every part, supervise, shut down. Errors (an interrupt included) end up in
    `errors`; the multiprocessing queues and shared memory live and die in this frame."""
    ctx = spawn_context()
    stop = ctx.Event()
    free: Queue[int] = ctx.Queue()
    results: Queue[Message] = ctx.Queue()
    ring: SlotRing | None = None
    procs: list[BaseProcess] = []
    threads: list[threading.Thread] = []
    try:
        ring = SlotRing(ring_shape[0], ring_shape[1], job.grid.tile)
        for slot in range(ring.slots):
            free.put(slot)
        procs = start_decoders(job, specs, decoders, ring, free, results, stop, ctx)
        consumer = make_consumer(ring, free.put)
        inbox: queue.Queue[Decoded | None] = queue.Queue()
        staged: queue.Queue[StagedBatch | None] = queue.Queue(maxsize=1)
        written: queue.Queue[TileBatch | None] = queue.Queue(maxsize=4)
        bodies: list[tuple[Callable[..., None], tuple[object, ...]]] = [
            (consumer.stage, (inbox, staged)),
            (consumer.compute, (staged, written)),
            (writer.run, (written, errors)),
        ]
        del consumer
        for target, args in bodies:
            threads.append(threading.Thread(target=target, args=args, daemon=True))
            threads[-1].start()
        del bodies
        _supervise(job, procs, results, inbox, errors, stats, started)
        inbox.put(None)  # every chunk decoded: flush the last batch, then the writer ends
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.1)
    except BaseException as exc:  # an interrupt too: cleaned up here, re-raised by the caller
        errors.report(exc)
    finally:
        _shut_down(errors, stop, threads, procs, ring, free, results)


def _supervise(
    job: SlideJob,
    procs: list[BaseProcess],
    results: Queue[Message],
    inbox: queue.Queue[Decoded | None],
    errors: FirstError,
    stats: EngineStats,
    started: float,
) -> None:
    """Forward decoded chunks until every decoder finished; a decoder's error, or one that
    died without a word (killed for memory, a crash in a codec), stops the run."""
    finished: set[int] = set()
    while len(finished) < len(procs) and not errors.stopped:
        try:
            msg = results.get(timeout=0.1)
        except queue.Empty:
            for d, proc in enumerate(procs):
                if d not in finished and proc.exitcode not in (None, 0):
                    errors.report(_died(job, proc.exitcode))
            continue
        if isinstance(msg, Decoded):
            if not stats.first_chunk_s:
                stats.first_chunk_s = time.perf_counter() - started
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
    errors: FirstError,
    stop: Event,
    threads: list[threading.Thread],
    procs: list[BaseProcess],
    ring: SlotRing | None,
    free: Queue[int],
    results: Queue[Message],
) -> None:
    """Stop every part and wait for it: threads first (the writer may be mid-chunk), then
    the decoders (joined, terminated if they do not stop), then the queues and the shared
    memory. Runs on every path; a second interrupt here does not skip the cleanup."""
    if errors.error is not None or any(t.is_alive() for t in threads):
        errors.stop()
    stop.set()
    for thread in threads:
        _uninterrupted(thread.join)
    for proc in procs:
        _uninterrupted(proc.join, JOIN_S)
        if proc.is_alive():
            proc.terminate()
            _uninterrupted(proc.join, JOIN_S)
        if proc.is_alive():
            proc.kill()
            _uninterrupted(proc.join)
    for q in (free, results):  # flush and end their feeder threads (they hold semaphores)
        q.close()
        _uninterrupted(q.join_thread)
    if ring is not None:
        ring.close()


def _uninterrupted(wait: Callable[..., object], *args: float) -> None:
    """Wait even through Ctrl-C: cleanup that stops half way would leak."""
    while True:
        with contextlib.suppress(KeyboardInterrupt):
            wait(*args)
            return
