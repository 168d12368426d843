"""Chunks' tiles read on the CPU with the slide library, ahead of the engine, in one thread.

The reads of the reader-thread source (`read_sources.ReaderThread`) for any slide. A local run
starts them once its chunks are planned, while the model loads: nothing here imports torch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from wsi_segment.pipeline.cancellation import POLL_S
from wsi_segment.pipeline.inference.engine_state import FirstError, Stopped
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.threads import WaitableThread, stop_wait_s
from wsi_segment.wsi.tile_reuse import TileReuse
from wsi_segment.wsi.tiling import ChunkSpec


class HostTiles:
    """Chunks read by one thread (`TileReader`) in plan order, at most `max_bytes` ahead of the
    engine, from `start` on; a read error ends it (met at that chunk). Methods as `DeviceTiles`."""

    def __init__(self, reader: TileReader, max_bytes: int = 128 << 20) -> None:
        self.reader, self._max_bytes = reader, max_bytes
        self._specs: list[ChunkSpec] | None = None
        self._cond = threading.Condition()
        # in plan order: ((row, col), the chunk's tiles), or (None, the error that ended reading)
        self._read: deque[tuple[tuple[int, int] | None, np.ndarray | BaseException]] = deque()
        self._bytes, self._stop, self._ended = 0, False, False
        self._thread: WaitableThread | None = None
        self.tile_reuse: TileReuse | None = None  # planned by the thread, first thing
        self.read_s = 0.0  # the thread's CPU seconds (summary.json)

    device = "cpu"  # where its tiles are

    def start(self, specs: Sequence[ChunkSpec]) -> None:
        """Read the chunks of `specs` that have tiles, in order, sharing decoded storage
        tiles (`wsi.tile_reuse`); nothing new if it reads exactly these already."""
        if self._specs == list(specs):
            return
        self.close()
        self._specs, self._stop, self._ended = list(specs), False, False
        self._thread = WaitableThread(self._read_all, (self._specs,), name="tile-prefetch")
        self._thread.start()

    def _current(self) -> bool:
        """Whether the calling thread is this reader's current one: `close` may leave a
        thread in a remote read (`threads.stop_wait_s`), which must not touch a later one's."""
        return self._thread is not None and self._thread.thread is threading.current_thread()

    def _read_all(self, specs: list[ChunkSpec]) -> None:
        t0 = time.thread_time()
        try:
            self.tile_reuse = self.reader.plan_tile_reuse(specs)
            for spec in (s for s in specs if s.tiles):
                with self._cond:
                    self._cond.wait_for(lambda: self._stop or self._bytes < self._max_bytes)
                    if self._stop or not self._current():
                        return
                tiles = self.reader.read_tiles(spec, self.tile_reuse)
                self._hand_over((spec.row, spec.col), tiles)
        except BaseException as exc:  # the engine raises it where it reads the next chunk
            self._hand_over(None, exc)
        finally:
            self.reader.close_local()
            with self._cond:
                if self._current():
                    self.read_s = time.thread_time() - t0
                    self._ended = True
                self._cond.notify_all()

    def _hand_over(self, at: tuple[int, int] | None, read: np.ndarray | BaseException) -> None:
        with self._cond:
            if not self._current():
                return  # left by `close`: nobody reads what it read
            self._read.append((at, read))
            self._bytes += read.nbytes if isinstance(read, np.ndarray) else 0
            self._cond.notify_all()

    def read_chunk(self, spec: ChunkSpec, errors: FirstError) -> np.ndarray:
        """The next chunk's tiles (asked in plan order), or its read's error; Stopped once the
        engine stops or this reader closes while it waits (a remote read may hang minutes)."""
        with self._cond:
            while not self._read:
                if self._stop or errors.stopped:
                    raise Stopped
                if self._ended:
                    raise RuntimeError(f"chunk ({spec.row}, {spec.col}) was not planned")
                self._cond.wait(POLL_S)
            at, read = self._read[0]
            if isinstance(read, BaseException):
                raise read
            if at != (spec.row, spec.col):
                raise RuntimeError(f"chunk ({spec.row}, {spec.col}) asked for, {at} read next")
            self._read.popleft()
            self._bytes -= read.nbytes
            self._cond.notify_all()
        return read

    def close(self) -> None:
        """Stop reading (after the current read) and drop what was not taken. A thread still
        in a remote read after `stop_wait_s` is left to end with it."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.wait(stop_wait_s(self.reader.slide_path))
        with self._cond:
            self._thread = None
            self._read.clear()
            self._bytes, self._specs = 0, None
