"""The engine's writer: gather each chunk's reduced tiles, finish a write unit when whole.

Batches of the consumer mix tiles of several chunks; a write unit (a chunk, or the chunks of
one zarr chunk when they are smaller: `ChunkSpec.write_unit`) is stitched, written and
summarised (`SlideJob.finish_block`) as soon as its last tile arrives, so memory holds only
the units in flight. Each unit owns its zarr chunks, so units can be finished side by
side: with `threads` > 1 the gathering thread hands whole units through a bounded queue to
that many finisher threads.
Compression, file writes and the numpy steps release the GIL, so threads overlap them;
polygon tracing and zarr's own event loop hold it (benchmarks/writer.py measures the parts).
Outcomes are kept by unit (its first chunk's index), so results do not depend on which
thread finished what.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsi_segment.pipeline.inference.chunk_inference import ReducedTiles
from wsi_segment.pipeline.inference.chunk_job import SlideJob
from wsi_segment.pipeline.inference.engine_state import FirstError
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.wsi.tiling import ChunkSpec

Segment = tuple[int, int, int]  # (chunk index in specs, first tile in the chunk, tiles)
Box = tuple[int, int, int, int]


@dataclass
class TileBatch:
    """One forward pass's stored outputs and whose tiles they are, in batch order."""

    segments: list[Segment]
    probs: np.ndarray  # uint8 (N, K, h, w)
    labels: np.ndarray  # uint8 (N, h, w)
    bytes_per_tile: int  # what crossed from the model's device per tile


@dataclass
class _Partial:
    probs: np.ndarray
    labels: np.ndarray
    filled: int = 0
    nbytes: int = 0


class ChunkWriter:
    """Collects tiles per chunk and finishes each chunk once all its tiles have arrived."""

    def __init__(
        self,
        job: SlideJob,
        specs: Sequence[ChunkSpec],
        progress: Progress | None = None,
        threads: int = 1,
    ) -> None:
        self._job = job
        self._specs = list(specs)
        self._progress = progress or NullProgress()
        self._partial: dict[int, _Partial] = {}
        self._threads = max(1, threads)
        self._progress_lock = threading.Lock()
        # set while `run` hands whole chunks to finisher threads (threads > 1)
        self._whole: queue.Queue[tuple[int, ChunkSpec, ReducedTiles] | None] | None = None
        self._errors: FirstError | None = None
        self.outcomes: list[ChunkOutcome | None] = [None] * len(self._specs)
        # write unit -> its chunks' indices; the chunks of a unit already complete
        self._units: dict[Box, list[int]] = {}
        for index, spec in enumerate(self._specs):
            self._units.setdefault(spec.write_unit()[0], []).append(index)
        self._unit_done: dict[Box, dict[int, ReducedTiles]] = {}

    def add(self, batch: TileBatch) -> None:
        """Place a batch's tiles; finish the chunks it completes."""
        pos = 0
        for index, first, count in batch.segments:
            part = self._partial.get(index)
            if part is None:
                n = len(self._specs[index].tiles)
                part = _Partial(
                    np.empty((n, *batch.probs.shape[1:]), np.uint8),
                    np.empty((n, *batch.labels.shape[1:]), np.uint8),
                )
                self._partial[index] = part
            part.probs[first : first + count] = batch.probs[pos : pos + count]
            part.labels[first : first + count] = batch.labels[pos : pos + count]
            part.filled += count
            part.nbytes += count * batch.bytes_per_tile
            pos += count
            if part.filled == len(part.probs):
                del self._partial[index]
                self._complete(index, ReducedTiles(part.probs, part.labels, part.nbytes))

    def finish_empty(self) -> None:
        """Chunks without tissue tiles still write their (empty) block and outcome."""
        so = self._job.grid.stride // self._job.grid.downsample
        for index, spec in enumerate(self._specs):
            if not spec.tiles:
                empty = ReducedTiles(
                    np.zeros((0, self._job.n_classes, so, so), np.uint8),
                    np.zeros((0, so, so), np.uint8),
                    0,
                )
                self._complete(index, empty)

    def _complete(self, index: int, reduced: ReducedTiles) -> None:
        """A whole chunk; once its write unit is whole, that unit goes to a finisher thread
        when there are some, else is finished here."""
        spec = self._specs[index]
        key = spec.write_unit()[0]
        members = self._units[key]
        if len(members) > 1:
            done = self._unit_done.setdefault(key, {})
            done[index] = reduced
            if len(done) < len(members):
                return
            del self._unit_done[key]
            spec, reduced = merge_unit(
                [self._specs[i] for i in members], [done[i] for i in members]
            )
            index = members[0]
        if self._whole is None or self._errors is None:
            self._finish(index, spec, reduced)
        else:
            self._errors.put(self._whole, (index, spec, reduced))

    def _finish(self, index: int, spec: ChunkSpec, reduced: ReducedTiles) -> None:
        self.outcomes[index] = self._job.finish_block(spec, reduced)
        with self._progress_lock:
            self._progress.advance(len(spec.tiles))

    def run(self, inbox: queue.Queue[TileBatch | None], errors: FirstError) -> None:
        """Thread body: add batches until the end marker (None) or a stop; errors go to
        `errors`. Returns only once every finisher thread has ended (nothing writes after).
        Closes this thread's handles."""
        finishers: list[threading.Thread] = []
        try:
            if self._threads > 1:
                self._errors, self._whole = errors, queue.Queue(maxsize=self._threads)
                for _ in range(self._threads):
                    finishers.append(
                        threading.Thread(target=self._finisher, args=(errors,), daemon=True)
                    )
                    finishers[-1].start()
            self.finish_empty()
            while (batch := errors.get(inbox)) is not None:
                self.add(batch)
            for _ in finishers:  # every chunk handed over: one end marker per finisher
                errors.put(self._whole_queue(), None)
        except BaseException as exc:  # Stopped included: report ignores it
            errors.report(exc)
        finally:
            # After an error the run is stopped (`report`): a finisher waiting for a chunk
            # ends at once, one mid-chunk after that chunk; on success each takes its marker.
            for thread in finishers:
                thread.join()
            self._whole = None
            self._job.close_local()

    def _whole_queue(self) -> queue.Queue[tuple[int, ChunkSpec, ReducedTiles] | None]:
        assert self._whole is not None
        return self._whole

    def _finisher(self, errors: FirstError) -> None:
        """Finisher thread body: finish whole chunks until the end marker or a stop."""
        whole = self._whole_queue()
        try:
            while (item := errors.get(whole)) is not None:
                self._finish(*item)
        except BaseException as exc:
            errors.report(exc)
        finally:
            self._job.close_local()

    def results(self) -> list[ChunkOutcome]:
        """Outcomes of the write units, in `specs` order; every unit must have finished."""
        missing = [key for key, members in self._units.items() if self.outcomes[members[0]] is None]
        if missing:
            raise RuntimeError(f"{len(missing)} chunks never completed (first: {missing[0]})")
        return [o for o in self.outcomes if o is not None]


def merge_unit(
    specs: Sequence[ChunkSpec], parts: Sequence[ReducedTiles]
) -> tuple[ChunkSpec, ReducedTiles]:
    """The chunks of one write unit as one chunk: the unit's boxes, their tiles in order."""
    core, out = specs[0].write_unit()
    spec = ChunkSpec(
        row=specs[0].row,
        col=specs[0].col,
        core_box=core,
        tiles=tuple(t for s in specs for t in s.tiles),
        out_box=out,
    )
    reduced = ReducedTiles(
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.labels for p in parts]),
        sum(p.bytes_from_model for p in parts),
    )
    return spec, reduced
