"""The engine's writer: gather each write unit's reduced tiles, finish the unit when whole.

Batches mix tiles of several chunks; a write unit (`ChunkSpec.write_unit`) is stitched,
written and summarised as soon as its last tile arrives, so memory holds only the units in
flight. Each unit owns its zarr chunks, so `threads` finisher threads finish units side by
side; outcomes are kept by unit, in plan order, whichever thread finished what.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from wsi_segment.pipeline.inference.engine_state import FirstError
from wsi_segment.pipeline.inference.slide_job import ReducedTiles, SlideJob
from wsi_segment.pipeline.outputs.chunk_summary import BlockPolygons, ChunkOutcome
from wsi_segment.pipeline.progress import Progress
from wsi_segment.wsi.tiling import ChunkSpec

Segment = tuple[int, int, int]  # (chunk index in specs, first tile in the chunk, tiles)
Box = tuple[int, int, int, int]
Whole = queue.Queue[tuple[int, ReducedTiles] | None]  # whole units by position; None: the end


@dataclass
class TileBatch:
    """One forward pass's stored outputs and whose tiles they are, in batch order."""

    segments: list[Segment]
    probs: np.ndarray  # uint8 (N, K, h, w)
    labels: np.ndarray  # uint8 (N, h, w)
    bytes_per_tile: int  # what crossed from the model's device per tile


@dataclass(frozen=True)
class WriteUnit:
    """What the writer finishes at once (`ChunkSpec.write_unit`): a chunk of whole zarr
    chunks, or the chunks of one zarr chunk as one chunk over its boxes (their tiles in plan
    order), even a lone one, so a unit always holds whole polygon cells."""

    spec: ChunkSpec
    starts: dict[int, int]  # each chunk's index in the plan -> its first tile's in `spec`


def write_units(specs: Sequence[ChunkSpec]) -> list[WriteUnit]:
    """The write units of a plan, in plan order."""
    members: dict[Box, list[int]] = {}
    for index, spec in enumerate(specs):
        members.setdefault(spec.write_unit()[0], []).append(index)
    units = []
    for core, chunks in members.items():
        spec = first = specs[chunks[0]]
        if len(chunks) > 1 or first.unit_core is not None:  # whole even where one has tissue
            tiles = tuple(t for i in chunks for t in specs[i].tiles)
            spec = ChunkSpec(first.row, first.col, core, tiles, first.write_unit()[1])
        sizes = [len(specs[i].tiles) for i in chunks[:-1]]
        units.append(WriteUnit(spec, dict(zip(chunks, accumulate(sizes, initial=0), strict=True))))
    return units


class UnitWriter:
    """Collects tiles per write unit; hands each whole one to `threads` finisher threads."""

    def __init__(
        self,
        job: SlideJob,
        specs: Sequence[ChunkSpec],
        progress: Progress,
        threads: int,
        polygons: BlockPolygons | None,  # None: each finisher traces in its thread
    ) -> None:
        self._job = job
        self._polygons = polygons
        self._units = write_units(specs)
        # each chunk's index -> its unit's position in `_units`
        self._unit_of = {i: n for n, unit in enumerate(self._units) for i in unit.starts}
        self._progress = progress
        self._partial: dict[int, ReducedTiles] = {}  # units begun, by position
        self._tiles_due = [len(unit.spec.tiles) for unit in self._units]
        self._threads = max(1, threads)
        self._progress_lock = threading.Lock()
        self.outcomes: list[ChunkOutcome | None] = [None] * len(self._units)

    def run(self, inbox: queue.Queue[TileBatch | None], errors: FirstError) -> None:
        """Thread body: hand on the units without tissue tiles (they still write their empty
        block), then add batches until the end marker or a stop; returns once the finishers
        have ended. Errors go to `errors`."""
        finishers: list[threading.Thread] = []
        whole: Whole = queue.Queue(self._threads)
        try:
            for _ in range(self._threads):
                thread = threading.Thread(target=self._finisher, args=(whole, errors), daemon=True)
                finishers.append(thread)
                thread.start()
            so = self._job.grid.stride // self._job.grid.downsample
            for n, unit in enumerate(self._units):
                if not unit.spec.tiles:
                    probs = np.zeros((0, self._job.n_classes, so, so), np.uint8)
                    errors.put(whole, (n, ReducedTiles(probs, np.zeros((0, so, so), np.uint8), 0)))
            while (batch := errors.get(inbox)) is not None:
                self._add(batch, whole, errors)
            for _ in finishers:  # every unit handed over: one end marker per finisher
                errors.put(whole, None)
        except BaseException as exc:  # Stopped included: report ignores it
            errors.report(exc)
        finally:
            # After an error the run is stopped (`report`): a finisher waiting for a unit
            # ends at once, one mid-unit after that unit; on success each takes its marker.
            for thread in finishers:
                thread.join()

    def _add(self, batch: TileBatch, whole: Whole, errors: FirstError) -> None:
        """Place a batch's tiles; hand on the units it completes."""
        pos = 0
        for index, first, count in batch.segments:
            n = self._unit_of[index]
            part = self._partial.get(n)
            if part is None:
                tiles = len(self._units[n].spec.tiles)
                part = self._partial[n] = ReducedTiles(
                    np.empty((tiles, *batch.probs.shape[1:]), np.uint8),
                    np.empty((tiles, *batch.labels.shape[1:]), np.uint8),
                    0,
                )
            at = self._units[n].starts[index] + first
            part.probs[at : at + count] = batch.probs[pos : pos + count]
            part.labels[at : at + count] = batch.labels[pos : pos + count]
            part.bytes_from_model += count * batch.bytes_per_tile
            self._tiles_due[n] -= count
            pos += count
            if not self._tiles_due[n]:
                del self._partial[n]
                errors.put(whole, (n, part))

    def _finisher(self, whole: Whole, errors: FirstError) -> None:
        """Thread body: stitch, write and summarise whole units until the end marker or a stop."""
        try:
            while (item := errors.get(whole)) is not None:
                n, reduced = item
                spec = self._units[n].spec
                self.outcomes[n] = self._job.finish_block(spec, reduced, self._polygons)
                with self._progress_lock:
                    self._progress.advance(len(spec.tiles))
        except BaseException as exc:
            errors.report(exc)

    def results(self) -> list[ChunkOutcome]:
        """Outcomes of the write units, in plan order; every unit must have finished."""
        missing = [u.spec for u, o in zip(self._units, self.outcomes, strict=True) if o is None]
        if missing:
            raise RuntimeError(f"{len(missing)} write units never completed (first: {missing[0]})")
        return [o for o in self.outcomes if o is not None]
