"""The device engine's writer: gather each chunk's reduced tiles, finish a chunk when whole.

Batches of the device consumer mix tiles of several chunks; a chunk is stitched, written
and summarised (`SlideJob.finish_block`, exactly what the threaded path does after the
model) as soon as its last tile arrives, so memory holds only the chunks in flight. The
writer is the only thread that writes the zarr store, and each chunk owns its zarr chunks.
"""

from __future__ import annotations

import queue
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
        self, job: SlideJob, specs: Sequence[ChunkSpec], progress: Progress | None = None
    ) -> None:
        self._job = job
        self._specs = list(specs)
        self._progress = progress or NullProgress()
        self._partial: dict[int, _Partial] = {}
        self.outcomes: list[ChunkOutcome | None] = [None] * len(self._specs)

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
                self._finish(index, ReducedTiles(part.probs, part.labels, part.nbytes))

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
                self._finish(index, empty)

    def _finish(self, index: int, reduced: ReducedTiles) -> None:
        spec = self._specs[index]
        self.outcomes[index] = self._job.finish_block(spec, reduced)
        self._progress.advance(len(spec.tiles))

    def run(self, inbox: queue.Queue[TileBatch | None], errors: FirstError) -> None:
        """Thread body: add batches until the end marker (None) or a stop; errors go to
        `errors`. Closes this thread's handles."""
        try:
            self.finish_empty()
            while (batch := errors.get(inbox)) is not None:
                self.add(batch)
        except BaseException as exc:  # Stopped included: report ignores it
            errors.report(exc)
        finally:
            self._job.close_local()

    def results(self) -> list[ChunkOutcome]:
        """Outcomes in `specs` order; every chunk must have finished."""
        missing = [i for i, o in enumerate(self.outcomes) if o is None]
        if missing:
            raise RuntimeError(f"{len(missing)} chunks never completed (first: {missing[0]})")
        return [o for o in self.outcomes if o is not None]
