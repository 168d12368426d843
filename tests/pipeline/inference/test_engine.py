"""The engine (a read source -> compute threads -> writer) writes exactly what each chunk run
alone writes (read, model, stitch, write: `tests.reference_inference.chunk_alone`, then
`SlideJob.finish_block` per write unit, `units_alone`, no engine): same zarr bytes, same outcomes, whatever reads the tiles (a reader thread, decoder
processes), however many compute threads and however its batches mix chunks."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import multiprocessing.connection
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from tests.conftest import (
    CMU_SLIDE,
    ENGINE,
    corrupt_middle_tile,
    engine_run,
    torch_handle,
    torch_spec,
)
from tests.engine_jobs import planned_job
from tests.engine_leaks import shm_entries
from tests.reference_inference import units_alone
from wsi_segment.errors import SlideError
from wsi_segment.models.bundle import load_bundle
from wsi_segment.models.runtimes.tile_io import ReducedOutputs
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.decoder_link import Decoded
from wsi_segment.pipeline.inference.engine import ReadSource, build_executor
from wsi_segment.pipeline.inference.engine_state import EngineStats
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.read_sources import DecoderProcesses, ReaderThread
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid, plan_chunks
from wsi_segment.wsi.tissue import TissueMask, detect_tissue, whole_slide


class TileByTile:
    """The real model's executor, one forward pass per tile: its arithmetic is then the same
    whichever batch a tile came in (a batch of 1 and of 5 may run different kernels on some
    CPUs), so the paths can be compared byte for byte while the engine still batches across
    chunks."""

    def __init__(self, executor) -> None:
        self.executor = executor

    def run(self, tiles):
        outs = [self.executor.run(tiles[i : i + 1]) for i in range(len(tiles))]
        return ReducedOutputs(*(np.concatenate([getattr(o, f) for o in outs]) for f in FIELDS))


FIELDS = ("probs", "labels", "cls_probs")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> ModelHandle:
    return torch_handle(load_bundle(tiny_model_dir), wrap=TileByTile)


# A level-0 box of CMU-1-Small-Region.svs over tile rows 4-11 and columns 4-9 of the tiny
# model's grid (48 model px = 192.4 level-0 px a tile core): chunk rows 2-5 and columns 2-4
# in chunks of 2 x 2 tiles, around the corner where four zarr chunks (write units) meet. Its
# tissue is 12 chunks and 46 tiles (of the slide's 29 and 100), two chunks partial at the
# tissue's edge; neighbouring chunks share the slide's JPEG tiles as in the whole slide.
FOUR_UNITS = (800, 800, 1900, 2300)


def tissue_within(tissue: TissueMask, box: tuple[int, int, int, int]) -> TissueMask:
    """`tissue` with its mask cleared outside the level-0 `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (round(v / tissue.downsample) for v in box)
    inside = np.zeros_like(tissue.mask)
    inside[y0:y1, x0:x1] = tissue.mask[y0:y1, x0:x1]
    return dataclasses.replace(tissue, mask=inside)


def make_job(
    tmp: Path,
    model: ModelHandle,
    chunk_tiles: int,
    slide_path: Path = CMU_SLIDE,
    detect: bool = True,
) -> tuple[SlideJob, list[ChunkSpec]]:
    """A job over CMU-1-Small-Region.svs (or a damaged copy) with small chunks, over the
    detected tissue (`detect`) or the whole slide."""
    return job_over(tmp, model, chunk_tiles, slide_path, tissue_of(slide_path, detect))


def tissue_of(slide_path: Path, detect: bool) -> TissueMask:
    """The slide's detected tissue (`detect`), or the whole slide as tissue."""
    slide = open_slide(slide_path)
    try:
        return detect_tissue(slide) if detect else whole_slide(slide)
    finally:
        slide.close()


def job_over(
    tmp: Path, model: ModelHandle, chunk_tiles: int, slide_path: Path, tissue: TissueMask
) -> tuple[SlideJob, list[ChunkSpec]]:
    """A job over the slide at `slide_path` with small chunks, over `tissue`."""
    slide = open_slide(slide_path)
    mpp = slide.require_mpp()
    meta = model.get().model.meta
    grid = TileGrid(tile=meta.tile_size, overlap=16, downsample=4)
    plan = plan_chunks(slide, mpp[0], meta.mpp, grid, chunk_tiles, tissue)
    job = planned_job(
        slide_path, slide.backend, plan, grid, model, meta.classes,
        store=tmp, tissue=tissue, colors=meta.colors, model_mpp=meta.mpp,
    )  # fmt: skip
    slide.close()
    return job, plan.specs


def four_units_tissue() -> TissueMask:
    """The detected tissue of CMU-1-Small-Region.svs inside `FOUR_UNITS`."""
    return tissue_within(tissue_of(CMU_SLIDE, detect=True), FOUR_UNITS)


@pytest.fixture(scope="module")
def four_units() -> TissueMask:
    """`four_units_tissue`, detected once for the module."""
    return four_units_tissue()


def four_units_job(
    tmp: Path, model: ModelHandle, tissue: TissueMask
) -> tuple[SlideJob, list[ChunkSpec]]:
    """This module's job: the `four_units` tissue in chunks of 2 x 2 tiles."""
    return job_over(tmp, model, 2, CMU_SLIDE, tissue)


def stored(job: SlideJob) -> np.ndarray:
    return np.asarray(zarr.open_array(job.zarr_path, mode="r")[:])


def assert_labels_match_outcomes(job: SlideJob, outcomes) -> None:
    """The label image the writers stored holds exactly the pixels the outcomes counted."""
    values = np.asarray(zarr.open_array(job.labels_path, mode="r")[:])
    per_value = np.bincount(values.ravel(), minlength=256)
    counts = np.append(per_value[1 : job.n_classes + 1], per_value[255])  # classes, Unclassified
    np.testing.assert_array_equal(counts, sum(o.counts for o in outcomes))
    assert counts.sum() > 0


def assert_same_outcomes(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.row, x.col, x.tiles_run, x.bytes_from_model) == (
            y.row,
            y.col,
            y.tiles_run,
            y.bytes_from_model,
        )
        np.testing.assert_array_equal(x.counts, y.counts)
        np.testing.assert_array_equal(x.prob_sums, y.prob_sums)
        assert x.polygons == y.polygons


@pytest.fixture(scope="module")
def alone(tmp_path_factory, tiny, four_units):
    """The reference: every chunk alone, one after the other, outside the engine, on one
    torch thread (the sources with two compute threads run one each, the others two: the
    bytes do not depend on it). Between tile-sized forward passes a second OpenMP thread
    only spins, which on a loaded machine cost the reference several times its CPU."""
    job, specs = four_units_job(tmp_path_factory.mktemp("alone") / "p.zarr", tiny, four_units)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcomes = units_alone(job, specs, ENGINE.batch)
    finally:
        torch.set_num_threads(before)
    return stored_run(job, outcomes), specs


def stored_run(job, outcomes):
    return stored(job), outcomes


def source_for(name: str, job: SlideJob, specs: list[ChunkSpec]) -> ReadSource:
    """The read source `name` for this job (host reads started on its chunks before the
    engine runs included, as a local run starts them while its model loads)."""
    if name.startswith("decoders-"):
        return DecoderProcesses(int(name.rsplit("-", 1)[1]))
    reads = HostTiles(job.reader)
    if name.endswith("prefetched"):
        reads.start(specs)
    return ReaderThread(reads)


SOURCES = {  # name -> compute threads
    "decoders-1": 1,
    "decoders-2": 1,
    "reader-thread": 1,
    "reader-thread-2-computes": 2,
    "reader-thread-prefetched": 2,
}


@pytest.mark.parametrize(
    "name",
    [
        # slow: [decoders-2] runs its code path (decoder processes, one compute thread)
        pytest.param("decoders-1", marks=pytest.mark.slow),
        "decoders-2",
        "reader-thread",
        # slow: [reader-thread-prefetched] runs its code path (the reader thread, two computes)
        pytest.param("reader-thread-2-computes", marks=pytest.mark.slow),
        "reader-thread-prefetched",
    ],
)
def test_every_source_writes_what_each_chunk_alone_writes(tmp_path, tiny, four_units, alone, name):
    (expected, expected_outcomes), specs = alone
    assert len(specs) >= 8 and sum(len(s.tiles) for s in specs) >= 40
    assert any(len(s.tiles) < 4 for s in specs)  # tissue edges: partial chunks
    job, specs = four_units_job(tmp_path / "p.zarr", tiny, four_units)
    stats = EngineStats()
    threads_before = threading.active_count()
    torch_threads = torch.get_num_threads()
    source = source_for(name, job, specs)
    outcomes = engine_run(job, specs, source, replace(ENGINE, computes=SOURCES[name]), stats=stats)
    assert stats.tiles == sum(len(s.tiles) for s in specs)
    assert max(stats.chunks_per_batch) >= 2  # a batch held tiles of several chunks
    assert stats.decoders == (int(name[-1]) if name.startswith("decoders") else 0)
    assert stats.computes == SOURCES[name]
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(outcomes, expected_outcomes)
    assert_labels_match_outcomes(job, outcomes)
    assert sum(o.bytes_from_model for o in outcomes) > 0
    assert multiprocessing.active_children() == []
    assert threading.active_count() == threads_before  # every part (a prefetcher too) ended
    assert torch.get_num_threads() == torch_threads  # the caller's count is its own again


@pytest.mark.parametrize("name", ["decoders-2", "reader-thread-prefetched"])
def test_a_damaged_tile_is_one_slide_error_and_leaves_nothing_behind(tmp_path, tiny, name):
    damaged = tmp_path / "cmu_damaged.svs"
    corrupt_middle_tile(CMU_SLIDE, damaged)
    whole = tissue_within(tissue_of(damaged, detect=False), FOUR_UNITS)
    job, specs = job_over(tmp_path / "p.zarr", tiny, 2, damaged, whole)
    before = shm_entries()
    threads_before = threading.active_count()
    with pytest.raises(SlideError) as caught:
        engine_run(job, specs, source_for(name, job, specs), replace(ENGINE, computes=2))
    assert threading.active_count() == threads_before
    text = str(caught.value)
    assert "cmu_damaged.svs" in text and "re-export" in text  # the file and the fix
    assert multiprocessing.active_children() == []  # decoders joined
    assert shm_entries() <= before  # the slot ring is gone


class FailsOnSecondBatch(TileByTile):
    """The real model's executor, failing (as out-of-memory would) on its second run."""

    def __init__(self, executor) -> None:
        super().__init__(executor)
        self.calls = 0

    def run(self, tiles):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("device out of memory (test)")
        return super().run(tiles)


@pytest.mark.parametrize("name", ["decoders-2", "reader-thread"])
def test_a_model_error_stops_the_source_and_nothing_writes_after(tmp_path, tiny, four_units, name):
    failing = torch_handle(tiny.get().model, wrap=FailsOnSecondBatch)
    job, specs = four_units_job(tmp_path / "p.zarr", failing, four_units)
    before = shm_entries()
    with pytest.raises(RuntimeError, match="out of memory"):
        engine_run(job, specs, source_for(name, job, specs), replace(ENGINE, computes=2))
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before
    written = sorted(p.name for p in Path(job.zarr_path).iterdir() if not p.name.startswith("."))
    time.sleep(0.3)  # nothing may still be writing once run_engine has raised
    assert sorted(p.name for p in Path(job.zarr_path).iterdir() if not p.name.startswith(".")) == (
        written
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cuda-graph"])
@pytest.mark.parametrize("source", ["decoders", "reader-thread"])
def test_engine_on_cuda_matches_the_cpu_within_one_level(
    tmp_path, tiny_model_dir, four_units, alone, cuda_graphs, source
):
    """Pinned staging, the side-stream copy and the device reduction, against the CPU run:
    tiles from decoder processes and from the reader thread, each batch run eagerly and as a
    replay of one captured CUDA graph (the GPU default, captured inside the engine while the
    stager copies on its side stream)."""
    (expected, _), _ = alone
    model = torch_handle(load_bundle(tiny_model_dir), device="cuda", cuda_graphs=cuda_graphs)
    assert model.get().runtime.report()["cuda_graphs"] is cuda_graphs
    job, specs = four_units_job(tmp_path / "p.zarr", model, four_units)
    reads = DecoderProcesses(2) if source == "decoders" else ReaderThread(HostTiles(job.reader))
    stats = EngineStats()
    engine_run(job, specs, reads, stats=stats)
    assert max(stats.chunks_per_batch) >= 2
    diff = np.abs(stored(job).astype(int) - expected.astype(int))
    assert diff.max() <= 1


def test_decoders_started_early_fill_the_ring_and_the_engine_adopts_them(
    tmp_path, tiny, four_units, alone
):
    """A pool started before the model loads decodes until the ring is full and no further
    (memory stays bounded); `run_engine` adopts one with chunks already decoded and closes it."""
    job, specs = four_units_job(tmp_path / "p.zarr", tiny, four_units)
    before = shm_entries()
    filled = DecodePool(2, job.reader, specs)
    try:
        assert filled.ring is not None
        slots = filled.ring.slots
        assert len(specs) > slots  # more chunks than slots: the decoders must wait
        messages: list[object] = []
        deadline = time.monotonic() + 120
        while len(messages) < slots and time.monotonic() < deadline:
            if (message := filled.receive(0.05)) is not None:
                messages.append(message)
        assert filled.receive(0.3) is None  # none past the ring
        # one Decoded per slot, every slot taken
        assert sorted(m.slot for m in messages if isinstance(m, Decoded)) == list(range(slots))
    finally:
        filled.close()
    pool = DecodePool(2, job.reader, specs)
    assert multiprocessing.connection.wait(pool.links, timeout=120)  # decoded before the run
    stats = EngineStats()
    outcomes = engine_run(job, specs, DecoderProcesses(2, pool), stats=stats)
    assert stats.early_decoders and stats.first_batch_at >= stats.first_chunk_at > 0
    (expected, expected_outcomes), _ = alone
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(outcomes, expected_outcomes)
    assert pool.ring is None and pool.procs == []  # closed by the engine
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before


def test_a_pool_for_other_chunks_is_closed_and_replaced(tmp_path, tiny, four_units, alone):
    job, specs = four_units_job(tmp_path / "p.zarr", tiny, four_units)
    before = shm_entries()
    stale = DecodePool(2, job.reader, specs[:3])
    stats = EngineStats()
    outcomes = engine_run(job, specs, DecoderProcesses(2, stale), stats=stats)
    assert not stats.early_decoders and stale.ring is None
    (expected, expected_outcomes), _ = alone
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(outcomes, expected_outcomes)
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before


class TwoChunksAtOnce(SlideJob):
    """The real job, whose first two chunks must be in `finish_block` at the same time (a
    barrier): it passes only if two writer threads finish chunks side by side."""

    def finish_block(self, spec, reduced, polygons):
        with self.probe_lock:
            self.calls += 1
            first_two = self.calls <= 2
        if first_two:
            self.barrier.wait()
        return super().finish_block(spec, reduced, polygons)


class FailsOnThirdChunk(SlideJob):
    """The real job, failing (as a full disk would) when finishing its third chunk. The
    chunks begun before it wait until it has failed, and a while more for the engine to
    note the failure, so that the writers' next pick always comes after the stop (without
    the wait, a loaded machine may let every chunk be taken before the third fails)."""

    def finish_block(self, spec, reduced, polygons):
        with self.probe_lock:
            self.calls += 1
            call = self.calls
        if call == 3:
            self.failed.set()
            raise OSError("No space left on device (test)")
        if call < 3 and self.failed.wait(30):
            time.sleep(1.0)
        return super().finish_block(spec, reduced, polygons)


def probed(job: SlideJob, cls: type[SlideJob]) -> SlideJob:
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.init}
    probe = cls(**fields)
    probe.probe_lock, probe.calls = threading.Lock(), 0
    probe.barrier = threading.Barrier(2, timeout=30)
    probe.failed = threading.Event()
    return probe


def test_several_writer_threads_finish_chunks_side_by_side_and_write_the_same(
    tmp_path, tiny, four_units, alone
):
    (expected, expected_outcomes), _ = alone
    job, specs = four_units_job(tmp_path / "p.zarr", tiny, four_units)
    job = probed(job, TwoChunksAtOnce)
    stats = EngineStats()
    outcomes = engine_run(job, specs, DecoderProcesses(2), replace(ENGINE, writers=3), stats=stats)
    units = len({s.write_unit() for s in specs})  # chunks of one zarr chunk are finished together
    assert units == 4 and stats.writers == 3 and job.calls == units
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(outcomes, expected_outcomes)  # in plan order, whoever finished
    assert_labels_match_outcomes(job, outcomes)
    assert sum(o.bytes_from_model for o in outcomes) > 0


def test_a_writer_error_wins_and_nothing_writes_after(tmp_path, tiny, four_units):
    job, specs = four_units_job(tmp_path / "p.zarr", tiny, four_units)
    job = probed(job, FailsOnThirdChunk)
    before = shm_entries()
    with pytest.raises(OSError, match="No space left"):
        engine_run(job, specs, DecoderProcesses(2), replace(ENGINE, writers=3))
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before
    listing = sorted(p.name for p in Path(job.zarr_path).iterdir())
    time.sleep(0.3)  # no writer thread may still be finishing a chunk
    assert sorted(p.name for p in Path(job.zarr_path).iterdir()) == listing
    assert job.calls < len({s.write_unit() for s in specs})  # the stop reached the writers


class ThreadCounts:
    """The real model's executor, recording torch's thread count in the compute thread of
    each forward pass (as the executor set it) into `seen`."""

    def __init__(self, executor, seen: list[int]) -> None:
        self.executor, self.seen = executor, seen

    def run(self, tiles):
        out = self.executor.run(tiles)
        self.seen.append(torch.get_num_threads())
        return out


def test_the_compute_threads_run_on_the_plans_cores(tmp_path, tiny_model_dir):
    """A plan's `cores` (fewer than torch's own count: a cgroup's CPU quota, a band's
    share; or more) set torch's threads in each compute thread, shared among them; the
    caller's count is its own after, and so is that of threads started after."""
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        wrap = functools.partial(ThreadCounts, seen=seen)
        handle = torch_handle(load_bundle(tiny_model_dir), wrap=wrap)
        job, specs = make_job(tmp_path / "p.zarr", handle, 2)
        engine_run(job, specs[:2], ReaderThread(HostTiles(job.reader)), replace(ENGINE, cores=1))
        assert seen and set(seen) == {1}
        seen.clear()
        engine_run(job, specs[:2], ReaderThread(HostTiles(job.reader)), replace(ENGINE, cores=3))
        assert set(seen) == {3}  # one compute thread: all of the plan's cores
        seen.clear()
        engine_run(
            job,
            specs[:2],
            ReaderThread(HostTiles(job.reader)),
            replace(ENGINE, computes=2, cores=3),
        )
        assert set(seen) == {1}  # two: one core each
        assert torch.get_num_threads() == 2
        # torch starts new threads with the count set last: the next slide's load and
        # reader threads get the caller's count, not a compute thread's share
        assert new_thread_torch_threads() == 2
    finally:
        torch.set_num_threads(caller)


def new_thread_torch_threads() -> int:
    """torch's thread count in a thread started now."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_build_executor_sizes_it_as_the_plan_says(tmp_path: Path, tiny_model_dir: Path) -> None:
    """On the CPU each compute thread runs on its share of the plan's cores; the batch is the
    plan's (only a CUDA device's memory caps it); the model's lock only where the
    plan has its forward passes take turns; built once per process and key."""
    from wsi_segment.models.runtimes.executor import TorchExecutor

    handle = ModelHandle(str(tiny_model_dir), "cpu", torch_spec())
    job, _specs = make_job(tmp_path / "p.zarr", handle, 2)
    sizes = replace(ENGINE, cores=5, computes=2, batch=12)
    free = build_executor(job.model, job.geometry, replace(sizes, locked=False))
    assert isinstance(free.executor, TorchExecutor) and free.executor.threads == 2
    assert (free.batch, free.device, free.lock, free.torch_runs) == (12, "cpu", None, True)
    loaded = handle.get()
    assert loaded.executor(job.geometry, 12, 2) is free.executor
    locked = build_executor(job.model, job.geometry, sizes)
    assert locked.lock is loaded.lock and locked.executor is free.executor
