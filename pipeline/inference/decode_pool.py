"""Decoder processes of the engine: read chunks, cut tiles into shared-memory slots.

Decoding does not scale with threads in one process (benchmarks/decode.py), so each decoder
is a process: spawned, never forked (a fork of a process holding CUDA or torch's thread
pools can hang), importing only numpy and the slide code (`tile_reader`: it resamples with
PIL, not torch). Each reads a contiguous share of the chunks, so it decodes each shared
storage tile once, into slots of a ring it owns; a slot goes back to it once the engine's
stager has copied it, so memory is bounded by the ring.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from wsi_segment.errors import (
    STOPPING_SIGNALS,
    TERMINATING_SIGNALS,
    WsiSegmentError,
    handled_signals,
    raise_terminated,
)
from wsi_segment.pipeline.inference.decoder_link import (
    Decoded,
    DecoderEnd,
    DecoderTask,
    Failed,
    Finished,
    Message,
    Stop,
    ToDecoder,
)
from wsi_segment.pipeline.inference.engine_state import picklable, wait_uninterrupted
from wsi_segment.pipeline.inference.main_guard import check_main_guard
from wsi_segment.pipeline.inference.shm_rings import (
    create_block,
    remove_abandoned_rings,
    reserve_block,
    ring_name,
    ring_slots,
)
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.wsi.tiling import ChunkSpec, contiguous_runs

JOIN_S = 5.0  # a decoder asked to stop finishes its current read first
_RING_SIZING = threading.Lock()  # `decoder_ring`


class SlotRing:
    """One shared-memory block cut into `slots` slots of `slot_tiles` tiles of T x T x 3."""

    def __init__(self, slots: int, slot_tiles: int, tile: int, name: str | None = None) -> None:
        self.slots = slots
        self._owner = name is None
        size = max(1, slots * slot_tiles * tile * tile * 3)
        if name is None:
            name = ring_name()
            self.shm = create_block(name, size)
            try:
                reserve_block(name, size)
            except BaseException:
                self.close()
                raise
        else:
            self.shm = SharedMemory(name)
        self._array: np.ndarray | None = np.ndarray(
            (slots, slot_tiles, tile, tile, 3), np.uint8, buffer=self.shm.buf
        )

    def view(self, slot: int, tiles: int) -> np.ndarray:
        """The first `tiles` tiles of `slot`, (tiles, T, T, 3) uint8, in shared memory."""
        assert self._array is not None
        return self._array[slot, :tiles]

    def close(self) -> None:
        """Drop this process's mapping; the creator also removes the block (idempotent)."""
        self._array = None  # the buffer's last export: the block cannot close while it lives
        with contextlib.suppress(Exception):
            self.shm.close()
        if self._owner:
            self._owner = False
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()


def decoder_ring(decoders: int, slot_tiles: int, tile: int) -> SlotRing:
    """The ring of `decoders`, sized by `ring_slots` and its memory reserved, one slide's at
    a time in this process: the next slide sizes its ring from what this one left."""
    with _RING_SIZING:
        remove_abandoned_rings()  # rings of killed runs, before this one counts free memory
        slots = ring_slots(decoders, slot_tiles * tile * tile * 3)
        return SlotRing(slots, slot_tiles, tile)


def decoder_shares(specs: Sequence[ChunkSpec], decoders: int) -> list[list[int]]:
    """Each decoder's share: one contiguous run of the plan's chunks with tiles
    (`wsi.tiling.contiguous_runs`); fewer shares than decoders where chunks are few."""
    runs = ([i for i in run if specs[i].tiles] for run in contiguous_runs(specs, decoders))
    return [share for share in runs if share]


class DecodePool:
    """The decoder processes of one run, with their pipes and slot ring: spawned before the
    chunks are known (spawning takes time), handed their shares once planned (`assign`).
    Whoever holds the pool closes it (idempotent) on every path."""

    def __init__(
        self, decoders: int, reader: TileReader | None = None, specs: Sequence[ChunkSpec] = ()
    ) -> None:
        """`reader` given: `assign` these chunks at once (a run that had no time to start
        the decoders early)."""
        check_main_guard()
        start_resource_tracker()
        started = time.perf_counter()
        self.decoders = decoders
        self.specs: list[ChunkSpec] | None = None  # None until `assign`
        self.ring: SlotRing | None = None
        self.procs: list[Any] = []
        self.links: list[Connection] = []  # this end of each decoder's pipe
        self._open: list[Connection] = []  # the links whose decoder may still send
        self._inbox: deque[Message] = deque()
        self._owners: list[int] = []  # slot -> the decoder it belongs to
        self._send_lock = threading.Lock()
        ctx = mp.get_context("spawn")
        # the stopping signals this thread holds stay held in the decoders (a batch's Dask
        # worker holds them all: `batch_flow._out_of_group_signals`)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        held = tuple(s for s in STOPPING_SIGNALS if s in mask)
        try:
            for d in range(decoders):
                ours, theirs = ctx.Pipe()
                self.links.append(ours)
                proc = ctx.Process(target=decoder_main, args=(d, theirs, held),
                                   name=f"wsi-decoder-{d}", daemon=True)  # fmt: skip
                try:
                    with signals_blocked():  # inherited: none lands while the decoder starts
                        proc.start()
                finally:
                    theirs.close()  # the decoder's own now: its end of file is the decoder's end
                self.procs.append(proc)
            self._open = list(self.links)
            self.spawn_s = time.perf_counter() - started  # until every decoder was started
            if reader is not None:
                self.assign(reader, specs)
        except BaseException:
            self.close()
            raise

    def assign(self, reader: TileReader, specs: Sequence[ChunkSpec]) -> None:
        """Make the slot ring for these chunks, send each decoder its share (None to one
        without: it reports itself finished) and deal the slots out among those with one."""
        if self.specs is not None or not self.procs:
            raise RuntimeError("a DecodePool is assigned once, while its decoders run")
        self.specs = list(specs)
        tile = reader.grid.tile
        slot_tiles = max([1, *(len(s.tiles) for s in self.specs)])
        ring = self.ring = decoder_ring(self.decoders, slot_tiles, tile)
        work = decoder_shares(self.specs, self.decoders)
        tasks = [DecoderTask(reader, [self.specs[i] for i in share], share, ring.shm.name,
                             ring.slots, slot_tiles, tile) for share in work]  # fmt: skip
        for d in range(self.decoders):
            self._send(d, tasks[d] if d < len(tasks) else None)
        self._owners = [slot % max(1, len(work)) for slot in range(ring.slots)]
        for slot in range(ring.slots):
            self.release(slot)

    def release(self, slot: int) -> None:
        """Give `slot` back to its decoder to fill again (its tiles were copied)."""
        self._send(self._owners[slot], slot)

    def receive(self, timeout: float) -> Message | None:
        """The next message of any decoder, waiting up to `timeout` s; None if none came."""
        if not self._inbox:
            self._collect(timeout)
        return self._inbox.popleft() if self._inbox else None

    def close(self) -> None:
        """Stop the decoders (joined, terminated if they do not stop), close the pipes and
        remove the shared memory. A second interrupt here does not skip the cleanup."""
        for d in range(len(self.links)):
            self._send(d, Stop())
        stops: list[BaseException | None] = []
        for proc in self.procs:
            stops.append(wait_uninterrupted(proc.join, JOIN_S))
            if proc.is_alive():
                proc.terminate()
                stops.append(wait_uninterrupted(proc.join, JOIN_S))
            if proc.is_alive():
                proc.kill()
                stops.append(wait_uninterrupted(proc.join))
        for link in self.links:
            link.close()
        if self.ring is not None:
            self.ring.close()
        self.procs, self.ring, self.links = [], None, []
        self._open.clear()
        self._inbox.clear()
        if (first_stop := next((s for s in stops if s is not None), None)) is not None:
            raise first_stop

    def _send(self, decoder: int, message: ToDecoder) -> None:
        """Send to one decoder; one that has ended is told nothing (its exit code says why)."""
        with self._send_lock, contextlib.suppress(OSError):
            self.links[decoder].send(message)

    def _collect(self, timeout: float) -> None:
        """Move what the decoders sent within `timeout` s into the inbox."""
        if not self._open:  # every decoder has ended: nothing more can come
            time.sleep(timeout)
            return
        try:
            ready = set(wait(self._open, timeout))
        except OSError:  # closed by `close` meanwhile: nothing more comes
            return
        for link in [link for link in self._open if link in ready]:
            try:
                while link.poll():
                    self._inbox.append(link.recv())
            except (EOFError, OSError):  # that decoder ended (or the pool closed)
                if link in self._open:
                    self._open.remove(link)


@contextlib.contextmanager
def signals_blocked(signals: Sequence[int] = STOPPING_SIGNALS) -> Iterator[None]:
    """Block `signals` in this thread for the block: a process started in it inherits the
    mask, so a signal to the process group waits until the child is ready for it."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with SIGHUP blocked (the mask is inherited):
    a SIGHUP to the process group would end it, and the slot ring would leak."""
    from multiprocessing import resource_tracker

    with signals_blocked((signal.SIGHUP,)):
        resource_tracker.ensure_running()


def decoder_main(decoder: int, conn: Connection, held: Sequence[int]) -> None:
    """Process body: wait for the share, then read each chunk in order into a free slot of
    its own and report it, until told to stop. SIGTERM and SIGHUP raise `Terminated`, so the
    ring is closed. It starts with the stopping signals blocked (`DecodePool`), else a Ctrl-C
    while it imports prints a traceback; one that came meanwhile lands once the handlers are
    set. A signal its run ignores (`nohup`) stays ignored, and those its starting thread held
    (`held`: a batch's Dask worker, which the batch stops itself) stay held, else the group's
    Ctrl-C would end the decoders of a worker that goes on and fail its band."""
    handled_signals(raise_terminated, TERMINATING_SIGNALS)
    link = DecoderEnd(conn)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOPPING_SIGNALS) - set(held))
        task = link.share()
    except KeyboardInterrupt:  # signalled with its parent (a process group): it cleans up
        return
    if task is None:
        if not link.stopped:
            link.send(Finished(decoder))
        return
    reader = task.reader
    ring = SlotRing(task.slots, task.slot_tiles, task.tile, name=task.shm_name)
    try:
        reuse = reader.plan_tile_reuse(task.specs)
        for index, spec in zip(task.indices, task.specs, strict=True):
            if link.stop_asked():
                return
            tiles = reader.read_tiles(spec, reuse)  # read before a slot is free: overlap
            slot = link.next_slot()
            if slot is None:
                return
            ring.view(slot, len(spec.tiles))[:] = tiles
            del tiles
            link.send(Decoded(slot, index, len(spec.tiles)))
        link.send(Finished(decoder))
    except BaseException as exc:
        # an error that cannot cross the pipe is not known to be the slide's: never
        # a SlideError, which a batch would record as a known failure
        failed = WsiSegmentError(f"{reader.slide_path}: decoding failed: {exc!r}")
        link.send(Failed(decoder, picklable(exc, failed)))
    finally:
        reader.close_local()
        ring.close()
