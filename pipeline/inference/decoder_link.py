"""What travels between the engine and one decoder process, and the decoder's end of it.

Each decoder has its own pipe: the engine sends its share (`DecoderTask`, or None), the free
slots it may fill and `Stop()`; the decoder sends `Decoded`, `Finished` or `Failed`. Pipes
hold no named semaphore (which a killed run would leave in /dev/shm, unnamed as ours), and
tell each end when the other is gone: a decoder whose engine died stops at its next wait.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TypeAlias

from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.wsi.tiling import ChunkSpec


@dataclass(frozen=True)
class DecoderTask:
    """One decoder's share of a run: its chunks and where the slot ring lives."""

    reader: TileReader
    specs: list[ChunkSpec]
    indices: list[int]
    shm_name: str
    slots: int
    slot_tiles: int
    tile: int


@dataclass(frozen=True)
class Stop:
    """The engine closes the pool: the decoder ends after its current read."""


@dataclass(frozen=True)
class Decoded:
    """A chunk's tiles ready in `slot`: `index` into the run's specs, `tiles` of them."""

    slot: int
    index: int
    tiles: int


@dataclass(frozen=True)
class Finished:
    """A decoder read its whole share."""

    decoder: int


@dataclass(frozen=True)
class Failed:
    """A decoder's error, travelling back as the exception itself."""

    decoder: int
    error: BaseException


Message: TypeAlias = Decoded | Finished | Failed  # what a decoder sends to the engine
ToDecoder: TypeAlias = DecoderTask | int | Stop | None  # what the engine sends a decoder


class DecoderEnd:
    """A decoder's end: its free slots, and whether to stop (told so, or the engine gone)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.slots: deque[int] = deque()
        self.stopped = False

    def share(self) -> DecoderTask | None:
        """Wait for this decoder's share (the first message); None: none, or stopped."""
        message = self._recv()
        if isinstance(message, DecoderTask):
            return message
        if isinstance(message, Stop):
            self.stopped = True
        return None

    def stop_asked(self) -> bool:
        """Whether to stop, from what has arrived so far (does not wait)."""
        self._take(0.0)
        return self.stopped

    def next_slot(self) -> int | None:
        """A free slot of this decoder's, waiting for one; None once it is to stop."""
        self._take(0.0)
        while not self.stopped and not self.slots:
            self._take(None)
        return None if self.stopped else self.slots.popleft()

    def send(self, message: Message) -> None:
        """Send to the engine; an engine gone (its end closed) means stop."""
        try:
            self.conn.send(message)
        except OSError:
            self.stopped = True

    def _take(self, timeout: float | None) -> None:
        """Take what arrives within `timeout` (None: wait for it), then all else that came."""
        while not self.stopped:
            try:
                if not self.conn.poll(timeout):
                    return
            except OSError:
                self.stopped = True
                return
            message = self._recv()
            if isinstance(message, int):
                self.slots.append(message)
            else:
                self.stopped = True
            timeout = 0.0

    def _recv(self) -> ToDecoder:
        try:
            message: ToDecoder = self.conn.recv()
        except (EOFError, OSError):
            return Stop()
        return message
