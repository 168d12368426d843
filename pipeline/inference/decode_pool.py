"""Decoder processes of the engine: read chunks, cut tiles into shared-memory slots.

Decoding (openslide, JPEG) is CPU work that does not scale with threads in one process, so
each decoder is its own process. They are *spawned*, never forked (a fork of a process that
holds CUDA or torch's thread pools can hang), and import only numpy and the slide code, so
they start in well under a second (`pipeline.inference.tile_reader`: a decoder is sent a
`TileReader`, a few numbers and paths). Each decoder gets a contiguous share of the chunks, so it can
decode each shared storage tile once (`TileReader.plan_tile_reuse`). Tiles go into a fixed ring
of shared-memory slots, one chunk per slot; a slot comes from the free-slot queue and goes
back when the engine's stager has copied its tiles: memory is bounded by the ring. What
travels on the queues is small: slot numbers and (slot, chunk, tiles) descriptors.

A `DecodePool` holds one run's decoders, queues and ring, spawned early by
`pipeline.prepare.prepare` (below); the engine's `DecoderProcesses` read source adopts it,
or starts its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import numpy as np

from wsi_segment.errors import TERMINATING_SIGNALS, SlideError, WsiSegmentError, raise_terminated
from wsi_segment.pipeline.inference.engine_state import wait_uninterrupted
from wsi_segment.pipeline.inference.main_guard import check_main_guard
from wsi_segment.pipeline.inference.shm_rings import (
    SHM_DIR,
    owned_semaphores,
    remove_abandoned_rings,
    ring_name,
)
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.wsi.tiling import ChunkSpec, contiguous_runs

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

JOIN_S = 5.0  # a decoder asked to stop finishes its current read first


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


Message: TypeAlias = Decoded | Finished | Failed  # what a decoder puts on `results`


class SlotRing:
    """One shared-memory block cut into `slots` slots of `slot_tiles` tiles of T x T x 3."""

    def __init__(self, slots: int, slot_tiles: int, tile: int, name: str | None = None) -> None:
        self.slots, self.slot_tiles, self.tile = slots, slot_tiles, tile
        size = max(1, slots * self.slot_bytes)
        self._owner = name is None
        self.shm = (
            SharedMemory(ring_name(), create=True, size=size)
            if name is None
            else SharedMemory(name)
        )
        self._array: np.ndarray | None = np.ndarray(
            (slots, slot_tiles, tile, tile, 3), np.uint8, buffer=self.shm.buf
        )

    @property
    def slot_bytes(self) -> int:
        return self.slot_tiles * self.tile * self.tile * 3

    def view(self, slot: int, tiles: int) -> np.ndarray:
        """The first `tiles` tiles of `slot`, (tiles, T, T, 3) uint8, in shared memory."""
        assert self._array is not None
        return self._array[slot, :tiles]

    def close(self) -> None:
        """Drop this process's mapping; the creator also removes the block (idempotent)."""
        self._array = None
        with contextlib.suppress(Exception):
            self.shm.close()
        if self._owner:
            self._owner = False
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()


def ring_slots(decoders: int, slot_bytes: int, shm_dir: str = SHM_DIR) -> int:
    """Slots for `decoders`: two each (one being filled, one waiting) plus two, within half
    of the free shared memory (containers often mount a small /dev/shm); at least
    decoders + 1, else a clear error with the fix."""
    wanted = 2 * decoders + 2
    try:
        st = os.statvfs(shm_dir)
        free = st.f_bavail * st.f_frsize
    except OSError:
        return wanted
    fits = (free // 2) // max(1, slot_bytes)
    if fits < decoders + 1:
        raise WsiSegmentError(
            f"{shm_dir}: {free >> 20} MiB of shared memory free, the engine needs "
            f"{(decoders + 1) * slot_bytes * 2 >> 20} MiB for {decoders} decoders; pass fewer "
            "--decoders, --decoders 0 (one reader thread), or give the container more (docker run "
            "--shm-size=1g)"
        )
    return int(min(wanted, fits))


def decoder_shares(specs: Sequence[ChunkSpec], decoders: int) -> list[list[int]]:
    """Each decoder's share: the chunks with tiles of one contiguous run of the plan
    (`wsi.tiling.contiguous_runs`, the splitter of a cluster's bands too), one per decoder
    (fewer when there are fewer chunks)."""
    runs = ([i for i in run if specs[i].tiles] for run in contiguous_runs(specs, decoders))
    return [share for share in runs if share]


class DecodePool:
    """The decoder processes of one run, with their queues and slot ring.

    Spawning is what takes time (each child imports numpy and the slide code), so a run
    spawns the decoders before it even knows its chunks (`DecodePool(decoders)`, while
    tissue is detected) and hands them their shares once planned (`assign`); they then fill
    the ring and wait for free slots, so memory stays bounded however long the model takes
    to load. Whoever holds the pool closes it (`close` is idempotent) on every path."""

    def __init__(self, decoders: int) -> None:
        check_main_guard()
        start_resource_tracker()
        started = time.perf_counter()
        self.decoders = decoders
        self.specs: list[ChunkSpec] | None = None  # None until `assign`
        ctx = mp.get_context("spawn")
        with owned_semaphores():  # named as ours, so a killed run's are removed by the next
            self.stop: Any = ctx.Event()
            self.free: Any = ctx.Queue()
            self.results: Any = ctx.Queue()
            self.work: Any = ctx.Queue()
        self.ring: SlotRing | None = None
        self.procs: list[Any] = []
        try:
            for d in range(decoders):
                args = (d, self.work, self.free, self.results, self.stop)
                proc = ctx.Process(target=decoder_main, args=args, name=f"wsi-decoder-{d}",
                                   daemon=True)  # fmt: skip
                proc.start()
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise
        self.spawn_s = time.perf_counter() - started  # until every decoder was started

    @classmethod
    def for_chunks(
        cls, reader: TileReader, specs: Sequence[ChunkSpec], decoders: int
    ) -> DecodePool:
        """Spawned and assigned at once (a run that had no time to start them early)."""
        pool = cls(decoders)
        try:
            pool.assign(reader, specs)
        except BaseException:
            pool.close()
            raise
        return pool

    def assign(self, reader: TileReader, specs: Sequence[ChunkSpec]) -> None:
        """Make the slot ring for these chunks and send each decoder its share (a decoder
        left without one reports itself finished)."""
        if self.specs is not None or not self.procs:
            raise RuntimeError("a DecodePool is assigned once, while its decoders run")
        self.specs = list(specs)
        tile = reader.grid.tile
        slot_tiles = max([1, *(len(s.tiles) for s in self.specs)])
        remove_abandoned_rings()  # rings of killed runs, before this one counts free memory
        slots = ring_slots(self.decoders, slot_tiles * tile * tile * 3)
        self.ring = SlotRing(slots, slot_tiles, tile)
        for slot in range(slots):
            self.free.put(slot)
        work = decoder_shares(self.specs, self.decoders)
        for share in work:
            task = DecoderTask(reader, [self.specs[i] for i in share], share, self.ring.shm.name,
                               slots, slot_tiles, tile)  # fmt: skip
            self.work.put(task)
        for _ in range(self.decoders - len(work)):
            self.work.put(None)

    def serves(self, specs: Sequence[ChunkSpec], decoders: int) -> bool:
        """Whether this pool reads exactly these chunks with this many decoders."""
        return self.ring is not None and decoders == self.decoders and list(specs) == self.specs

    def close(self) -> None:
        """Stop the decoders (joined, terminated if they do not stop), close the queues and
        remove the shared memory; every reference to them is dropped, so no named semaphore
        outlives the pool. A second interrupt here does not skip the cleanup."""
        if self.ring is None and not self.procs:
            return
        if self.stop is not None:
            self.stop.set()
        stops: list[BaseException | None] = []
        for proc in self.procs:
            stops.append(wait_uninterrupted(proc.join, JOIN_S))
            if proc.is_alive():
                proc.terminate()
                stops.append(wait_uninterrupted(proc.join, JOIN_S))
            if proc.is_alive():
                proc.kill()
                stops.append(wait_uninterrupted(proc.join))
        for q in (self.free, self.results, self.work):  # flush and end their feeder threads
            if q is not None:
                q.close()
                stops.append(wait_uninterrupted(q.join_thread))
        if self.ring is not None:
            self.ring.close()
        self.procs, self.ring = [], None
        self.stop = self.free = self.results = self.work = None
        first_stop = next((s for s in stops if s is not None), None)
        if first_stop is not None:
            raise first_stop


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (if it is not running) with SIGHUP blocked.
    It ignores SIGINT and SIGTERM by itself, but a SIGHUP to the process group (an ssh
    session dropping) would end it, and with it the unlinking of what it tracks: the
    decoders' queues and semaphores would leak. Blocking SIGHUP in this thread while it
    starts passes the block on to it (a signal mask survives fork and exec)."""
    from multiprocessing import resource_tracker

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


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


def decoder_main(
    decoder: int,
    work: Queue[DecoderTask | None],
    free: Queue[int],
    results: Queue[Message],
    stop: Event,
) -> None:
    """Process body: wait for this decoder's share (the imports are done by then), then read
    each chunk of it, cut its tiles into a free slot and report it. SIGTERM (`timeout`
    signals the whole process group; `close` terminates a decoder that does not stop)
    raises `Terminated` as Ctrl-C raises KeyboardInterrupt, so the slot ring is closed; so
    does SIGHUP (the terminal's whole group gets it when the ssh session drops)."""
    for signum in TERMINATING_SIGNALS:
        signal.signal(signum, raise_terminated)
    try:
        task = _wait_for(work, stop)
    except KeyboardInterrupt:  # signalled with its parent (a process group): it cleans up
        return
    if task is None:
        if not stop.is_set():
            results.put(Finished(decoder))
        return
    reader = task.reader
    ring = SlotRing(task.slots, task.slot_tiles, task.tile, name=task.shm_name)
    try:
        try:
            reuse = reader.plan_tile_reuse(task.specs)
        except Exception:  # reading works without reuse; read errors surface below
            reuse = None
        for index, spec in zip(task.indices, task.specs, strict=True):
            if stop.is_set():
                return
            tiles = reader.read_tiles(spec, reuse)  # read before a slot is free: overlap
            slot = _wait_for(free, stop)
            if slot is None:
                return
            n = len(spec.tiles)
            ring.view(slot, n)[:] = tiles
            del tiles
            results.put(Decoded(slot, index, n))
        results.put(Finished(decoder))
    except BaseException as exc:
        results.put(Failed(decoder, _picklable(exc, reader.slide_path)))
    finally:
        reader.close_local()
        ring.close()


T = TypeVar("T")


def _wait_for(source: Queue[T], stop: Event) -> T | None:
    """The next item of `source`; None once the run stops, or once the process that started
    this decoder died without stopping it (a Dask worker killed mid-band): no one would
    send it work or free a slot."""
    parent = mp.parent_process()
    while not stop.is_set():
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None
    return None


def _picklable(exc: BaseException, slide_path: str) -> BaseException:
    """The exception itself when it survives the queue, else a SlideError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return SlideError(f"{slide_path}: decoding failed: {exc!r}")
