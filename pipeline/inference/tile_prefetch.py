"""Read chunks' tiles ahead of the model, in one background thread, bounded in bytes (local
runs only: `TilePrefetcher`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.threads import WaitableThread
from wsi_segment.wsi.tile_reuse import TileReuse
from wsi_segment.wsi.tiling import ChunkSpec


class TilePrefetcher:
    """Reads chunks' tiles ahead of the model in one background thread, bounded in bytes:
    while torch imports and the model loads, then ahead of the forward passes.

    A chunk is read exactly once: `take(spec)` returns its prefetched tiles, waits if the
    reader is on that very chunk, and otherwise claims it for the caller to read (None), so
    no chunk waits for the reader to get round to it. A read error stops the reader; the
    chunk's caller then reads it and raises the error.
    """

    def __init__(self, reader: TileReader, specs: list[ChunkSpec], max_bytes: int = 128 << 20):
        self._reader = reader
        self._specs = list(specs)
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._state: dict[tuple[int, int], str] = {}  # "reading" | "done" | "taken"
        self._images: dict[tuple[int, int], np.ndarray] = {}
        self._bytes = 0
        self._stop = False
        self.read_s = 0.0  # thread CPU seconds spent reading (for the summary)
        self.tile_reuse: TileReuse | None = None  # planned by the reader thread, first thing
        self._planned = threading.Event()
        self._thread = WaitableThread(self._loop, name="tile-prefetch")
        self._thread.start()

    def _loop(self) -> None:
        t0 = time.thread_time()
        try:
            try:
                self.tile_reuse = self._reader.plan_tile_reuse(self._specs)
            finally:
                self._planned.set()
            for spec in self._specs:
                key = (spec.row, spec.col)
                with self._cond:
                    while not self._stop and self._bytes >= self._max_bytes:
                        self._cond.wait()
                    if self._stop:
                        return
                    if key in self._state:  # a runner got there first
                        continue
                    self._state[key] = "reading"
                try:
                    result = self._reader.read_tiles(spec, self.tile_reuse)
                except BaseException:
                    with self._cond:
                        del self._state[key]  # its runner reads it and reports the error
                        self._stop = True
                        self._cond.notify_all()
                    return
                with self._cond:
                    self._state[key] = "done"
                    self._images[key] = result
                    self._bytes += result.nbytes
                    self._cond.notify_all()
        finally:
            self.read_s = time.thread_time() - t0
            self._reader.close_local()

    def serves(self, specs: Sequence[ChunkSpec]) -> bool:
        """Whether this prefetcher reads exactly these chunks."""
        return list(specs) == self._specs

    def take(self, spec: ChunkSpec) -> np.ndarray | None:
        key = (spec.row, spec.col)
        with self._cond:
            while self._state.get(key) == "reading":
                self._cond.wait()
            if self._state.get(key) == "done":
                self._state[key] = "taken"
                result = self._images.pop(key)
                self._bytes -= result.nbytes
                self._cond.notify_all()
                return result
            self._state[key] = "taken"
            return None

    def read_here(self, spec: ChunkSpec) -> np.ndarray:
        """Read a chunk the caller claimed with `take`, sharing the decoded storage tiles."""
        self._planned.wait()
        return self._reader.read_tiles(spec, self.tile_reuse)

    def close(self) -> None:
        """Stop reading and drop what was not taken (waits for the current read)."""
        with self._cond:
            self._stop = True
            self._images.clear()
            self._bytes = 0
            self._cond.notify_all()
        self._thread.wait()
