"""Bands of a slide for Dask workers: how the plan is cut, and one band run in a process, a
daemonic one included (which may not start decoders and reads in its thread instead).
Cluster runs are in tests/flows/test_dask_bands.py."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (
    CMU_SLIDE,
    ENGINE,
    TORCH_SPEC,
    WrappedLoaded,
    corrupt_middle_tile,
    engine_run,
    torch_handle,
    torch_loaded,
    torch_spec,
)
from tests.engine_leaks import shm_entries
from tests.pipeline.inference.killed_parent import pool_then_wait
from tests.pipeline.inference.test_engine import (
    FOUR_UNITS,
    assert_same_outcomes,
    four_units_tissue,
    job_over,
    stored,
    tissue_of,
    tissue_within,
)
from tests.pipeline.inference.test_engine_shared_model import TurnWatch
from tests.reference_inference import units_alone
from wsi_segment.errors import BandAborted, SlideError
from wsi_segment.models.bundle import load_bundle
from wsi_segment.pipeline.cancellation import Cancellation
from wsi_segment.pipeline.inference.band_task import BandResult, run_band
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.read_sources import DecoderProcesses, ReaderThread
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.machine import probe_machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.read_policy import Decision
from wsi_segment.pipeline.run_policy import (
    BAND,
    CLUSTER,
    ExecutionPlan,
    RunFacts,
    decide,
    runtime_spec,
)
from wsi_segment.wsi.tiling import ChunkSpec
from wsi_segment.wsi.tissue import TissueMask


def band_job(
    zarr: Path, model_dir: Path, chunk_tiles: int = 2, slide: Path = CMU_SLIDE
) -> tuple[SlideJob, list[ChunkSpec]]:
    """A job over the CMU slide's tissue (the whole of a damaged copy), as `band_job_over`."""
    return band_job_over(zarr, model_dir, slide, tissue_of(slide, detect=slide == CMU_SLIDE))


# the engine in this process at `band_job_over`'s batch: one tile per forward pass
ONE_TILE_ENGINE = dataclasses.replace(ENGINE, batch=1)


def band_job_over(
    zarr: Path, model_dir: Path, slide: Path, tissue: TissueMask, chunk_tiles: int = 2
) -> tuple[SlideJob, list[ChunkSpec]]:
    """A job over `tissue` of `slide` whose model travels as its folder (a worker loads it),
    CPU fp32 (`band_options` gives one tile per forward pass: a tile's arithmetic is then the
    same whichever chunks share its batch, so every path can be compared byte for byte)."""
    model = torch_handle(load_bundle(model_dir))
    job, specs = job_over(zarr, model, chunk_tiles, slide, tissue)
    handle = ModelHandle(str(model_dir), "cpu", torch_spec("fp32"))
    return dataclasses.replace(job, model=handle), specs


def band_options(decoders: int | None = None, batch_size: int = 1) -> SegmentParams:
    """The run's options each band decides its policy from: `band_job`'s CPU fp32 model in
    torch (the handle the tests give the bands), one tile per forward pass."""
    return SegmentParams(
        device="cpu", precision="fp32", runtime="torch", batch_size=batch_size, decoders=decoders
    )


def cluster_plan(options: SegmentParams) -> ExecutionPlan:
    """The plan a client on this machine decides for a Dask run with `options` (as
    `prepare` does for a cluster) and ships to every band."""
    return decide(probe_machine(), options, RunFacts(CLUSTER))


def one_torch_thread_reference(job: SlideJob, specs: list[ChunkSpec]):
    """Every chunk alone, outside the engine, with one torch thread per forward pass, as on
    a Dask worker (started with OMP_NUM_THREADS=1): the last bits may depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return units_alone(job, specs, 1)
    finally:
        torch.set_num_threads(before)


# Where four write units meet on the CMU slide (they meet at level-0 1536, 1536): 9 chunks
# of 2 x 2 tiles, 23 tiles, write units of 9, 6, 6 and 2 tiles (three of several chunks).
# Half `FOUR_UNITS`' forward passes, for the tests whose subject is not a band's length.
CORNER = (1024, 1024, 1792, 1792)


def corner_tissue() -> TissueMask:
    """The detected tissue of CMU-1-Small-Region.svs inside `CORNER`."""
    return tissue_within(tissue_of(CMU_SLIDE, detect=True), CORNER)


@pytest.fixture(scope="module")
def four_units() -> TissueMask:
    """The module's tissue (`corner_tissue`: 9 chunks, 23 tiles, four write units),
    detected once; the flows' cluster tests run the whole tissue (`band_job`)."""
    return corner_tissue()


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, four_units: TissueMask
):
    job, specs = band_job_over(
        tmp_path_factory.mktemp("ref") / "p.zarr", tiny_model_dir, CMU_SLIDE, four_units
    )
    outcomes = one_torch_thread_reference(job, specs)
    return stored(job), outcomes


@pytest.mark.parametrize("threads", [False, True], ids=["decoders", "reader-thread"])
def test_an_aborted_engine_stops_and_leaves_nothing_behind(
    tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask, threads: bool
):
    job, specs = band_job_over(tmp_path / "p.zarr", tiny_model_dir, CMU_SLIDE, four_units)
    abort = Cancellation()
    abort.cancel(BandAborted)
    before = shm_entries()
    source = ReaderThread(HostTiles(job.reader)) if threads else DecoderProcesses(1)
    with pytest.raises(BandAborted):
        engine_run(job, specs, source, ONE_TILE_ENGINE, cancel=abort)
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before


def band_source_name(decoders: int | None) -> str:
    return "decoder processes" if decoders else "reader thread"


@pytest.mark.parametrize(("decoders", "expected_decoders"), [(1, 1), (None, 0)])
def test_a_band_runs_the_engine_and_writes_what_each_chunk_alone_writes(
    tmp_path: Path,
    tiny_model_dir: Path,
    four_units: TissueMask,
    reference,
    decoders,
    expected_decoders,
) -> None:
    """With decoders asked for, and by default on the CPU: the reader thread."""
    expected, expected_outcomes = reference
    job, specs = band_job_over(tmp_path / "p.zarr", tiny_model_dir, CMU_SLIDE, four_units)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the compute stage's forward passes use the caller's count
    try:
        band = run_band(job, specs, None, cluster_plan(band_options(decoders)), gpu=False)
    finally:
        torch.set_num_threads(before)
    assert (band.decoders, band.error, band.aborted) == (expected_decoders, None, False)
    assert band.reads == {
        "read_device": "cpu",
        "read_device_reason": "the model is not on a CUDA device",
    }
    policy = band.policy  # decided in the band from this machine and the options
    assert policy["place"] == "band" and policy["read_source"] == band_source_name(decoders)
    assert policy["batch_size"] == {"value": 1, "reason": "asked for (--batch-size 1)"}
    assert (policy["compute_threads"]["value"], policy["model_lock"]["value"]) == (1, False)
    assert not band.daemonic
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(band.outcomes, expected_outcomes)


def test_bands_of_one_cpu_worker_run_their_forward_passes_side_by_side(
    tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask
) -> None:
    """A CPU worker runs one band per thread, each on its share of the cores: under the
    worker's one model lock they would compute one at a time (the per-chunk path measured
    172 s instead of 60 s that way)."""
    loaded = torch_loaded(load_bundle(tiny_model_dir))
    watch = TurnWatch(loaded.lock, hold_s=0.05)  # passes that can overlap do
    watched = WrappedLoaded(loaded.model, loaded.runtime, loaded.lock, wrap=watch.wrap)
    # the handle the bands' own plan asks for, so they run the watched model
    options = band_options(batch_size=2)
    spec = runtime_spec(decide(probe_machine(), options, RunFacts(BAND)), TORCH_SPEC.geometry)
    handle = ModelHandle.of(watched, str(tiny_model_dir), "cpu", spec)
    bands: list[BandResult] = []
    threads = []
    for name in ("a", "b"):
        job, specs = job_over(tmp_path / f"{name}.zarr", handle, 2, CMU_SLIDE, four_units)
        target = lambda job=job, specs=specs: bands.append(  # noqa: E731
            run_band(job, specs, None, cluster_plan(band_options(batch_size=2)), gpu=False)
        )
        threads.append(threading.Thread(target=target))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [(b.decoders, b.error, b.aborted) for b in bands] == [(0, None, False)] * 2
    assert watch.most_at_once == 2  # both bands' forward passes ran at the same time
    assert not any(watch.held)  # none waited for the model's lock


def _band_in_daemon(job: SlideJob, specs: list[ChunkSpec], out: multiprocessing.Queue) -> None:
    torch.set_num_threads(1)
    band = run_band(job, specs, None, cluster_plan(band_options(1)), False)
    out.put((multiprocessing.current_process().daemon, band))


def test_a_daemonic_worker_reads_in_a_thread_with_the_same_outputs(
    tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask, reference
) -> None:
    """A daemonic process may not start decoders (Dask's default for workers): the band
    reads in its reader thread instead, and says so (0 decoders, `daemonic`)."""
    expected, expected_outcomes = reference
    job, specs = band_job_over(tmp_path / "p.zarr", tiny_model_dir, CMU_SLIDE, four_units)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_band_in_daemon, args=(job, specs, out), daemon=True)
    proc.start()
    daemonic, band = out.get(timeout=300)
    proc.join(timeout=60)
    assert daemonic and proc.exitcode == 0
    assert isinstance(band, BandResult) and (band.decoders, band.error) == (0, None)
    assert band.daemonic
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(band.outcomes, expected_outcomes)


def test_bad_input_comes_back_as_the_band_s_error_not_raised(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Raised, Dask would retry the band twice, reading the damaged slide three times."""
    damaged = tmp_path / "cmu_damaged.svs"
    corrupt_middle_tile(CMU_SLIDE, damaged)
    whole = tissue_within(tissue_of(damaged, detect=False), FOUR_UNITS)
    job, specs = band_job_over(tmp_path / "p.zarr", tiny_model_dir, damaged, whole)
    band = run_band(job, specs, None, cluster_plan(band_options(1)), gpu=False)
    assert isinstance(band.error, SlideError) and "cmu_damaged.svs" in str(band.error)
    assert band.outcomes == [] and not band.aborted
    assert multiprocessing.active_children() == []


def test_decoders_exit_when_the_process_that_started_them_is_killed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """No one would free a slot again: waiting decoders notice their parent is gone (over
    `four_units_tissue`'s 46 tiles, not the module's smaller `four_units`: the decoders
    must be left waiting for slots)."""
    job, specs = band_job_over(tmp_path / "p.zarr", tiny_model_dir, CMU_SLIDE, four_units_tissue())
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    parent = ctx.Process(target=pool_then_wait, args=(job.reader, specs, out))
    parent.start()
    pids = out.get(timeout=120)
    time.sleep(1.0)  # the decoders fill the ring and wait for slots
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, already exited but not yet reaped by init, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_band_runs_the_plan_shipped_to_it(
    tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask
) -> None:
    """A band takes the client's plan whole but for its worker's decisions: runtime and
    precision (with their reasons) are the shipped plan's, and the model it loads carries
    them out; a plan the worker would decide otherwise is refused before any model loads."""
    from wsi_segment.errors import PlanMismatch
    from wsi_segment.pipeline.inference.band_task import band_plan

    # a cpu fp32 torch handle
    job, _specs = band_job_over(tmp_path / "z.zarr", tiny_model_dir, CMU_SLIDE, four_units)
    shipped = cluster_plan(SegmentParams(device="cpu", runtime="torch", precision="fp32"))
    band, band_job_, _tiles = band_plan(job, shipped, 1, examine=False)
    assert (band.place, shipped.place) == ("band", "cluster")
    assert (band.runtime, band.precision) == (shipped.runtime, shipped.precision)
    spec = band_job_.model.spec
    assert (spec.runtime, spec.precision) == ("torch", "fp32")
    assert spec.precision_reason == f"fp32: {shipped.precision.reason}"
    foreign = dataclasses.replace(shipped, precision=Decision("bf16", "decided elsewhere"))
    with pytest.raises(PlanMismatch, match="slide's precision as fp32"):
        band_plan(job, foreign, 1, examine=False)


def test_a_band_keeps_a_handle_whose_decisions_differ_only_in_their_reasons_wording(
    tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask
) -> None:
    """A band replaces its handle (and so loads the model again) only for other decided
    values: reasons worded otherwise than the band's own plan words them keep it."""
    from wsi_segment.pipeline.inference.band_task import band_plan

    job, _specs = band_job_over(tmp_path / "z.zarr", tiny_model_dir, CMU_SLIDE, four_units)
    shipped = cluster_plan(band_options())
    _policy, decided_job, _tiles = band_plan(job, shipped, 1, examine=False)
    had = decided_job.model
    assert had is not job.model  # the band's own decisions, with their reasons
    spec = dataclasses.replace(
        had.spec, runtime_reason="worded otherwise", precision_reason="worded otherwise"
    )
    reworded = dataclasses.replace(had, spec=spec)
    job = dataclasses.replace(decided_job, model=reworded)
    _policy, kept_job, _tiles = band_plan(job, shipped, 1, examine=False)
    assert kept_job.model is reworded


def test_a_worker_s_openvino_graphs_take_its_bands_cores_not_its_torch_count(
    tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask
) -> None:
    """A Dask worker starts with OMP_NUM_THREADS=1, so the thread that loads its model has
    one torch thread. The graphs take the run policy's cores of the process instead (its
    bands' shares together): each band's compute thread then runs in a stream of its own,
    where one thread gave one stream and the worker's bands took turns on it."""
    from wsi_segment.pipeline.inference.band_task import band_plan
    from wsi_segment.pipeline.inference.compute_stage import compute_threads_cores

    job, _specs = band_job_over(tmp_path / "z.zarr", tiny_model_dir, CMU_SLIDE, four_units)
    options = SegmentParams(device="cpu", precision="fp32", runtime="openvino", batch_size=1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what OMP_NUM_THREADS=1 gives the worker's threads
    try:  # two bands at once on this machine, both in this worker process
        policy, job, _tiles = band_plan(job, cluster_plan(options), 2, False, worker_bands=2)
        loaded = job.model.get()
    finally:
        torch.set_num_threads(before)
    cores = probe_machine().cores
    share = max(1, cores // 2)
    assert (policy.cores.value, policy.process_cores.value) == (share, min(cores, 2 * share))
    assert job.model.spec.threads == policy.process_cores.value
    graphs = loaded.runtime.graphs
    assert graphs is not None and graphs.threads == policy.process_cores.value
    # a band's compute thread: its share of the band's cores, as the engine gives it
    thread_cores = compute_threads_cores(policy.cores.value, policy.compute_threads.value)
    executor = loaded.executor(job.geometry, 1, thread_cores)
    assert executor.streams == (2 if cores >= 2 else 1)  # a stream for each band at once
