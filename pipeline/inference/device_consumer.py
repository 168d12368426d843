"""The device engine's consumer: the one owner of the model, fed batches across chunks.

Two threads share the work of feeding one device. The stager takes decoded chunks in the
order they arrive, copies their tiles from the shared-memory slots into one of two reused
staging buffers (pinned on CUDA) until a batch is full (a batch may hold tiles of several
chunks), frees each slot as soon as its tiles are copied, and on CUDA starts the batch's
host-to-device copy on a side stream. The compute thread runs `predict_reduced` batch after
batch, so the next batch's copy overlaps this batch's compute, and hands the uint8 outputs
to the writer. On the device read path (`pipeline.inference.device_reader`) a reader thread
makes the batches on the device instead of the stager, and the compute thread runs them the
same way.

Each forward pass holds the model's lock. Alone, the consumer is its only user and the lock
costs nothing; in a batch, the slides in flight share one loaded model per process
(`model_handle.load_for_process`) and each runs a consumer, so the lock makes it one
forward pass at a time per device, the slides' batches interleaved. Side by side they would
gain nothing (their kernels queue on the device's one default stream, or on the CPU fight
over the same cores) and could run the device out of memory: `batch_limit` sizes a batch to
the memory free for *one* forward pass.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from wsi_segment.pipeline.inference.chunk_writer import Segment, TileBatch
from wsi_segment.pipeline.inference.decode_pool import Decoded, SlotRing
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError
from wsi_segment.pipeline.inference.model_handle import model_device_type
from wsi_segment.wsi.tiling import TileGrid

if TYPE_CHECKING:
    from wsi_segment.models.segmentation_model import SegmentationModel


@dataclass
class StagedBatch:
    """A batch copied out of the slots, on its way to (or already on) the device."""

    buffer: int | None  # which staging buffer holds the batch (returned after the forward
    # pass); None: made on the device by the device reader
    tiles: torch.Tensor  # (N, T, T, 3) uint8 on the model's device (CPU: the buffer itself)
    segments: list[Segment]
    ready: torch.cuda.Event | None  # recorded after the copy on the side stream; CPU: None


class DeviceConsumer:
    """Feeds one model batches of `batch_size` tiles gathered across chunks."""

    def __init__(
        self,
        model: SegmentationModel,
        lock: threading.Lock,
        grid: TileGrid,
        batch_size: int,
        gate: bool,
        ring: SlotRing | None,
        release: Callable[[int], None],
        errors: FirstError,
        stats: EngineStats,
    ) -> None:
        """`ring` None: no stager (the device reader makes the batches), no staging buffers."""
        self._model, self._lock, self._grid = model, lock, grid
        self._batch, self._gate, self._ring = batch_size, gate, ring
        self._release, self._errors, self._stats = release, errors, stats
        self._cuda = model_device_type(model) == "cuda" and torch.cuda.is_available()
        self._device = model.device
        shape = (batch_size, grid.tile, grid.tile, 3)
        self._buffers = [
            torch.empty(shape, dtype=torch.uint8, pin_memory=self._cuda)
            for _ in range(2 if ring is not None else 0)
        ]
        self._free_buffers: queue.Queue[int] = queue.Queue()
        for i in range(len(self._buffers)):
            self._free_buffers.put(i)
        self._side = torch.cuda.Stream(self._device) if self._cuda else None
        self._threads = torch.get_num_threads()  # the caller's: the compute thread uses them

    def stage(
        self, inbox: queue.Queue[Decoded | None], staged: queue.Queue[StagedBatch | None]
    ) -> None:
        """Thread body: decoded chunks -> full batches on the device (None ends both)."""
        try:
            self._stage(inbox, staged)
        except BaseException as exc:
            self._errors.report(exc)

    def _stage(
        self, inbox: queue.Queue[Decoded | None], staged: queue.Queue[StagedBatch | None]
    ) -> None:
        errors, ring = self._errors, self._ring
        assert ring is not None, "a consumer without a slot ring has no stager"
        current: Decoded | None = None
        done = 0  # tiles of `current` already copied
        ended = False
        while not ended:
            k = errors.get(self._free_buffers)
            host = self._buffers[k].numpy()
            filled, segments = 0, []
            while filled < self._batch:
                if current is None:
                    current, done = errors.get(inbox), 0
                    if current is None:
                        ended = True
                        break
                take = min(self._batch - filled, current.tiles - done)
                host[filled : filled + take] = ring.view(current.slot, current.tiles)[
                    done : done + take
                ]
                segments.append((current.index, done, take))
                filled, done = filled + take, done + take
                if done == current.tiles:
                    self._release(current.slot)
                    current = None
            if filled:
                errors.put(staged, self._transfer(k, filled, segments))
            else:
                self._free_buffers.put(k)
        errors.put(staged, None)

    def _transfer(self, k: int, n: int, segments: list[Segment]) -> StagedBatch:
        """Start the batch's copy to the device (CUDA: asynchronous, on the side stream)."""
        host = self._buffers[k][:n]
        if not self._cuda:
            return StagedBatch(k, host, segments, None)
        with torch.cuda.stream(self._side):
            tiles = host.to(self._device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._side)
        return StagedBatch(k, tiles, segments, ready)

    def compute(
        self, staged: queue.Queue[StagedBatch | None], out: queue.Queue[TileBatch | None]
    ) -> None:
        """Thread body: forward passes back to back; outputs to the writer (None ends it)."""
        try:
            if not self._cuda:  # a new thread starts with OpenMP's default, not the caller's
                torch.set_num_threads(self._threads)
            while (batch := self._errors.get(staged)) is not None:
                self._errors.put(out, self._forward(batch))
            self._errors.put(out, None)
        except BaseException as exc:
            self._errors.report(exc)

    def _forward(self, batch: StagedBatch) -> TileBatch:
        tiles = batch.tiles
        if batch.ready is not None:  # the copy ran on the side stream: order it before compute
            stream = torch.cuda.current_stream(self._device)
            stream.wait_event(batch.ready)
            tiles.record_stream(stream)
        g = self._grid
        if not self._stats.first_batch_at:
            self._stats.first_batch_at = time.perf_counter()
        with self._lock:  # one forward pass at a time per model (see the module's docstring)
            out = self._model.predict_reduced(
                tiles.permute(0, 3, 1, 2), g.margin, g.stride, g.downsample, self._gate
            )
        if batch.buffer is not None:  # its copy is done: the forward pass used it
            self._free_buffers.put(batch.buffer)
        n = len(batch.tiles)
        probs, labels = out.probs.numpy(), out.labels.numpy()
        stats = self._stats
        stats.chunks_per_batch.append(len({index for index, _, _ in batch.segments}))
        stats.tiles += n
        stats.bytes_from_model += out.nbytes
        return TileBatch(batch.segments, probs, labels, out.nbytes // n)
