"""Decoder processes of the device engine: read chunks, cut tiles into shared-memory slots.

Decoding (openslide, JPEG) is CPU work that does not scale with threads in one process, so
each decoder is its own process. They are *spawned*, never forked (a fork of a process that
holds CUDA or torch's thread pools can hang), and import only numpy and the slide code, so
they start in well under a second. Each decoder gets a contiguous band of chunks, so it can
decode each shared storage tile once (`SlideJob.plan_tile_reuse`). Tiles go into a fixed ring
of shared-memory slots, one chunk per slot; a slot comes from the free-slot queue and goes
back when the device consumer has copied its tiles: memory is bounded by the ring. What
travels on the queues is small: slot numbers and (slot, chunk, tiles) descriptors.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from wsi_segment.errors import SlideError, WsiSegmentError
from wsi_segment.pipeline.inference.chunk_inference import cut_tiles
from wsi_segment.pipeline.inference.chunk_job import SlideJob
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class Decoded:
    """A chunk's tiles ready in `slot`: `index` into the run's specs, `tiles` of them."""

    slot: int
    index: int
    tiles: int


@dataclass(frozen=True)
class Finished:
    """A decoder read its whole band."""

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
        self.shm = SharedMemory(create=True, size=size) if name is None else SharedMemory(name)
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
            f"{shm_dir}: {free >> 20} MiB of shared memory free, the device engine needs "
            f"{(decoders + 1) * slot_bytes * 2 >> 20} MiB for {decoders} decoders; pass fewer "
            "--decoders, --decoders 0 (threads), or give the container more (docker run "
            "--shm-size=1g)"
        )
    return int(min(wanted, fits))


def bands(specs: Sequence[ChunkSpec], decoders: int) -> list[list[int]]:
    """Contiguous runs of chunk indices (chunks with tiles only), balanced by tile count,
    one per decoder (fewer when there are fewer chunks)."""
    indices = [i for i, s in enumerate(specs) if s.tiles]
    n = max(1, min(decoders, len(indices)))
    total = sum(len(specs[i].tiles) for i in indices)
    out: list[list[int]] = [[] for _ in range(n)]
    done = 0
    for i in indices:
        band = min(n - 1, done * n // max(1, total))
        out[band].append(i)
        done += len(specs[i].tiles)
    return [b for b in out if b]


def start_decoders(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    decoders: int,
    ring: SlotRing,
    free: Queue[int],
    results: Queue[Message],
    stop: Event,
    ctx: SpawnContext,
) -> list[BaseProcess]:
    """Spawn one daemon process per band; each puts Decoded / Finished / Failed on `results`."""
    procs: list[BaseProcess] = []
    for d, band in enumerate(bands(specs, decoders)):
        args = (d, job, [specs[i] for i in band], band, ring.shm.name, ring.slots,
                ring.slot_tiles, ring.tile, free, results, stop)  # fmt: skip
        proc = ctx.Process(target=decode_band, args=args, name=f"wsi-decoder-{d}", daemon=True)
        proc.start()
        procs.append(proc)
    return procs


def spawn_context() -> SpawnContext:
    return mp.get_context("spawn")


def decode_band(
    decoder: int,
    job: SlideJob,
    specs: list[ChunkSpec],
    indices: list[int],
    shm_name: str,
    slots: int,
    slot_tiles: int,
    tile: int,
    free: Queue[int],
    results: Queue[Message],
    stop: Event,
) -> None:
    """Process body: read each chunk of the band, cut its tiles into a free slot, report it."""
    ring = SlotRing(slots, slot_tiles, tile, name=shm_name)
    try:
        try:
            reuse = job.plan_tile_reuse(specs)
        except Exception:  # reading works without reuse; read errors surface below
            reuse = None
        for index, spec in zip(indices, specs, strict=True):
            if stop.is_set():
                return
            image, box = job.read(spec, reuse)
            slot = _take_slot(free, stop)
            if slot is None:
                return
            n = len(spec.tiles)
            cut_tiles(image, (box[0], box[1]), list(spec.tiles), job.grid, out=ring.view(slot, n))
            del image
            results.put(Decoded(slot, index, n))
        results.put(Finished(decoder))
    except BaseException as exc:
        results.put(Failed(decoder, _picklable(exc, job.slide_path)))
    finally:
        job.close_local()
        ring.close()


def _take_slot(free: Queue[int], stop: Event) -> int | None:
    while not stop.is_set():
        try:
            return int(free.get(timeout=0.1))
        except queue.Empty:
            continue
    return None


def _picklable(exc: BaseException, slide_path: str) -> BaseException:
    """The exception itself when it survives the queue, else a SlideError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return SlideError(f"{slide_path}: decoding failed: {exc!r}")
