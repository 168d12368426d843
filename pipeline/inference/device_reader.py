"""The device engine's read path on the model's device: one reader thread instead of the
decoder processes and the stager.

    reader (thread)    walks the chunks in plan order, reads each chunk's tiles onto the
        |              model's device (`DeviceTiles.read_tiles`: storage tiles decoded once per
        |              slide) and fills batches across chunks there
    compute (thread)   `DeviceConsumer.compute`, unchanged: forward passes back to back
        |
    writer (thread)    `ChunkWriter.run`, unchanged

On CUDA the reader works on a side stream and records each batch's `ready` event there, so
the next batch is decoded and assembled while this one computes; on the CPU device the same
code runs without streams (the tests' path). Memory is bounded by the queues: one batch
being filled, one waiting, one in the forward pass. The first error (a damaged tile, the
model's, the writer's) stops every part, and nothing returns while a part may still write.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from wsi_segment.errors import SlideError
from wsi_segment.pipeline.inference.chunk_writer import ChunkWriter, Segment
from wsi_segment.pipeline.inference.decode_pool import wait_uninterrupted
from wsi_segment.pipeline.inference.device_consumer import DeviceConsumer, StagedBatch
from wsi_segment.pipeline.inference.device_tiles import DeviceTiles
from wsi_segment.pipeline.inference.engine_state import (
    EngineStats,
    FirstError,
    Part,
    Stopped,
    join_parts,
    start_parts,
)
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.chunk_writer import TileBatch


class DeviceReader:
    """Reads `specs` with `reads` into batches of `batch` tiles on the model's device."""

    def __init__(
        self,
        reads: DeviceTiles,
        specs: Sequence[ChunkSpec],
        batch: int,
        errors: FirstError,
        stats: EngineStats,
        started: float,
    ) -> None:
        self._reads, self._specs, self._batch = reads, list(specs), batch
        self._errors, self._stats, self._started = errors, stats, started
        device = reads.device
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def run(self, staged: queue.Queue[StagedBatch | None]) -> None:
        """Thread body: every chunk's tiles, batched, then None; errors go to `errors`."""
        try:
            with torch.cuda.stream(self._side) if self._side else contextlib.nullcontext():
                self._run(staged)
        except BaseException as exc:  # Stopped included: report ignores it
            self._errors.report(exc)

    def _run(self, staged: queue.Queue[StagedBatch | None]) -> None:
        errors, batch = self._errors, self._batch
        parts: list[torch.Tensor] = []
        segments: list[Segment] = []
        filled = 0
        for index, spec in enumerate(self._specs):
            if not spec.tiles:
                continue  # the writer writes chunks without tissue tiles itself
            if errors.stopped:
                raise Stopped
            tiles = self._read(spec)
            if not self._stats.first_chunk_s:
                self._stats.first_chunk_at = time.perf_counter()
                self._stats.first_chunk_s = self._stats.first_chunk_at - self._started
            done = 0
            while done < len(tiles):
                take = min(batch - filled, len(tiles) - done)
                parts.append(tiles[done : done + take])
                segments.append((index, done, take))
                filled, done = filled + take, done + take
                if filled == batch:
                    errors.put(staged, self._staged(parts, segments))
                    parts, segments, filled = [], [], 0
        if filled:
            errors.put(staged, self._staged(parts, segments))
        errors.put(staged, None)

    def _read(self, spec: ChunkSpec) -> torch.Tensor:
        try:
            return self._reads.read_tiles(spec)
        except torch.OutOfMemoryError:
            raise  # the device's, not the slide's
        except (RuntimeError, ValueError, OSError) as exc:  # a codec on a damaged tile
            path = self._reads.reader.slide_path
            raise SlideError(
                f"{path}: cannot decode the tiles of chunk ({spec.row}, {spec.col}) on the "
                f"{self._reads.device.type} device: {exc}. The slide file is damaged there; "
                "re-scan or re-export it (--read-device cpu reads it with the slide library)"
            ) from exc

    def _staged(self, parts: list[torch.Tensor], segments: list[Segment]) -> StagedBatch:
        """One batch from the parts (copied into one tensor: the parts are views of their
        chunks' tiles), ready for the compute thread."""
        if self._side is None:  # numpy concatenates uint8 far faster than torch on the CPU
            host = np.concatenate([p.numpy() for p in parts])
            return StagedBatch(None, torch.from_numpy(host), segments, None)
        tiles = torch.cat(parts)
        ready = torch.cuda.Event()
        ready.record(self._side)
        return StagedBatch(None, tiles, segments, ready)


def run_device_reads(
    reads: DeviceTiles,
    specs: Sequence[ChunkSpec],
    make_consumer: Callable[[], DeviceConsumer],
    batch: int,
    writer: ChunkWriter,
    errors: FirstError,
    stats: EngineStats,
    started: float,
) -> None:
    """Run the reader, compute and writer threads until every chunk is written or the first
    error; errors (an interrupt included) end up in `errors`. Returns only once every
    thread has ended, so nothing writes into the zarr store after."""
    threads: list[threading.Thread] = []
    try:
        reads.plan_reuse(specs)
        consumer = make_consumer()
        reader = DeviceReader(reads, specs, batch, errors, stats, started)
        staged: queue.Queue[StagedBatch | None] = queue.Queue(maxsize=1)
        written: queue.Queue[TileBatch | None] = queue.Queue(maxsize=4)
        bodies: list[Part] = [
            (reader.run, (staged,)),
            (consumer.compute, (staged, written)),
            (writer.run, (written, errors)),
        ]
        del consumer, reader
        start_parts(bodies, threads)
        del bodies
        join_parts(threads)
    except BaseException as exc:  # an interrupt too: cleaned up here, re-raised by the caller
        errors.report(exc)
    finally:
        if errors.error is not None or any(t.is_alive() for t in threads):
            errors.stop()
        for thread in threads:
            wait_uninterrupted(thread.join)
