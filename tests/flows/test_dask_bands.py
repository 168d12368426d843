"""Bands on a real LocalCluster with worker processes: each band runs the engine on its
worker, with decoder processes or its reader thread, and the slide comes out as a local run
writes it, whichever reads the tiles. The band runs take the CMU slide's tissue where four
write units meet (`four_units`: test_band_runner's `corner_tissue`), enough for several
bands on each worker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    CMU_SLIDE,
    corrupt_middle_tile,
    engine_run,
)
from tests.flows.conftest import output_files, stable_summary
from tests.pipeline.inference.test_band_runner import (
    CORNER,
    ONE_TILE_ENGINE,
    band_job,
    band_job_over,
    band_options,
    cluster_plan,
    corner_tissue,
    one_torch_thread_reference,
)
from tests.pipeline.inference.test_engine import (
    FOUR_UNITS,
    assert_same_outcomes,
    stored,
    tissue_of,
    tissue_within,
)
from wsi_segment.errors import BandAborted, ClusterLost, SlideError, SlideInterrupted
from wsi_segment.pipeline.cancellation import Cancellation
from wsi_segment.pipeline.inference.band_runner import run_bands
from wsi_segment.pipeline.inference.band_task import BandResult, run_band
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.read_sources import DecoderProcesses, ReaderThread
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.known_failures import error_class_of, recurs
from wsi_segment.wsi.tiling import ChunkSpec, contiguous_runs
from wsi_segment.wsi.tissue import TissueMask

SOURCES = {"decoders": 1, "reader-thread": None}  # name -> --decoders of the run


class Counted:
    """A progress bar that remembers what it was told."""

    def __init__(self) -> None:
        self.advances: list[int] = []

    def note(self, text: str) -> None:
        pass

    def start(self, total: int, unit: str = "tile", desc: str = "") -> None:
        pass

    def advance(self, n: int) -> None:
        self.advances.append(n)

    def close(self) -> None:
        pass


def _daemonic() -> bool:
    return multiprocessing.current_process().daemon


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


@pytest.fixture(scope="module")
def client() -> Iterator:
    """Our local cluster (flows.dask_cluster): 2 non-daemonic worker processes, 1 thread each."""
    from wsi_segment.flows.dask_cluster import dask_client

    with dask_client(workers=2, threads=1) as c:
        c.wait_for_workers(2, timeout=120)
        assert list(c.run(_daemonic).values()) == [False, False]
        # forward passes on one torch thread, as the reference's
        assert list(c.run(_torch_threads).values()) == [1, 1]
        yield c


@pytest.fixture(scope="module")
def four_units() -> TissueMask:
    """The module's tissue (`corner_tissue`: 9 chunks, 23 tiles, four write units of 9, 6,
    6 and 2 tiles), detected once."""
    return corner_tissue()


def four_units_job(
    zarr: Path, model_dir: Path, tissue: TissueMask
) -> tuple[SlideJob, list[ChunkSpec]]:
    """`band_job_over` the CMU slide's `four_units` tissue."""
    return band_job_over(zarr, model_dir, CMU_SLIDE, tissue)


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, four_units: TissueMask
):
    """Every chunk alone in this process (one torch thread per forward pass)."""
    job, specs = four_units_job(
        tmp_path_factory.mktemp("ref") / "p.zarr", tiny_model_dir, four_units
    )
    outcomes = one_torch_thread_reference(job, specs)
    return stored(job), outcomes


@pytest.mark.parametrize("name", list(SOURCES))
def test_bands_on_workers_write_what_local_runs_write(
    client, reference, tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask, name: str
) -> None:
    from distributed import get_task_stream

    expected, expected_outcomes = reference
    decoders = SOURCES[name]
    job, specs = four_units_job(tmp_path / "engine.zarr", tiny_model_dir, four_units)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the engine in this process, too: one compute stage, all the chunks
        source = DecoderProcesses(decoders) if decoders else ReaderThread(HostTiles(job.reader))
        local = engine_run(job, specs, source, ONE_TILE_ENGINE)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(local, expected_outcomes)

    job, specs = four_units_job(tmp_path / "bands.zarr", tiny_model_dir, four_units)
    bands: list[BandResult] = []
    progress = Counted()
    prefix = f"band-t{name}"
    with get_task_stream(client=client) as stream:
        outcomes = run_bands(
            job,
            specs,
            client,
            cluster_plan(band_options(decoders)),
            progress,
            key_prefix=prefix,
            results=bands,
        )
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(outcomes, expected_outcomes)
    # three per worker slot asked; a band never splits a write unit (the tissue is four
    # zarr chunks of 9, 6, 6 and 2 tiles), so the balanced cut makes four
    assert len(bands) == len(contiguous_runs(specs, 6)) == 4
    # the engine, with a decoder process each, or (the CPU default) its reader thread
    assert [b.decoders for b in bands] == [decoders or 0] * 4
    assert not any(b.daemonic for b in bands)
    # the bar advances once per band, by its tiles
    assert len(progress.advances) == 4
    assert sum(progress.advances) == sum(len(s.tiles) for s in specs)
    workers = {task["worker"] for task in stream.data if str(task["key"]).startswith(prefix)}
    assert len(workers) == 2  # both workers ran bands


def test_a_damaged_slide_fails_with_one_clear_error_and_no_band_retried(
    client, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from distributed import get_task_stream

    damaged = tmp_path / "cmu_damaged.svs"
    corrupt_middle_tile(CMU_SLIDE, damaged)  # inside FOUR_UNITS: 48 tiles, 4 write units
    whole = tissue_within(tissue_of(damaged, detect=False), FOUR_UNITS)
    job, specs = band_job_over(tmp_path / "p.zarr", tiny_model_dir, damaged, whole)
    with get_task_stream(client=client) as stream, pytest.raises(SlideError) as caught:
        run_bands(job, specs, client, cluster_plan(band_options(1)), key_prefix="band-bad")
    assert "cmu_damaged.svs" in str(caught.value) and "re-export" in str(caught.value)
    keys = [str(t["key"]) for t in stream.data if str(t["key"]).startswith("band-bad")]
    assert len(keys) == len(set(keys)) > 0  # each band ran at most once: no retries
    starts = client.run_on_scheduler(_times_processing, "band-bad")
    assert starts and max(starts.values()) == 1, starts  # the scheduler sent each once


def _times_processing(prefix: str, dask_scheduler=None) -> dict[str, int]:
    """How often the scheduler sent each task whose key starts with `prefix` to a worker."""
    counts: dict[str, int] = {}
    for entry in dask_scheduler.transition_log:
        key, finish = str(entry[0]), entry[2]
        if key.startswith(prefix) and finish == "processing":
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_the_cluster_is_sized_for_bands(client) -> None:
    from wsi_segment.pipeline.inference.band_runner import _slots

    # two CPU workers of one thread on this machine: two bands at once share its cores
    assert _slots(client) == ({"127.0.0.1": 2}, False)


def test_a_running_band_stops_its_engine_once_the_slide_failed(client) -> None:
    """The band's watcher turns the cluster-wide abort event into the cancellation of the
    band's engine, `BandAborted` (an aborted engine stops and cleans up: test_band_runner)."""
    from distributed import Event

    from wsi_segment.pipeline.inference.band_task import _watching

    event = Event("band-watch-test", client=client)
    stop = Cancellation()
    try:
        with _watching(event, stop):
            assert not stop.cancelled
            event.set()
            assert stop.wait(timeout=60)
            assert stop.reason is BandAborted
    finally:
        event.clear()


def test_a_slides_bands_stop_once_its_token_is_cancelled(
    client, tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask
) -> None:
    """A batch stopping a slide on a cluster (its token cancelled once the first band is
    done): `run_bands` raises the stop's reason, the other bands are told to stop through
    the abort event and none is left running on a worker."""
    from wsi_segment.pipeline.inference.band_runner import STOP_GRACE_S

    job, specs = four_units_job(tmp_path / "p.zarr", tiny_model_dir, four_units)
    cancel = Cancellation()

    class StopAfterFirstBand(Counted):
        cancelled_at = 0.0

        def advance(self, n: int) -> None:
            super().advance(n)
            if cancel.cancel(SlideInterrupted):
                self.cancelled_at = time.monotonic()

    progress = StopAfterFirstBand()
    with pytest.raises(SlideInterrupted):
        run_bands(
            job,
            specs,
            client,
            cluster_plan(band_options()),
            progress,
            "band-cancel",
            8,
            cancel=cancel,
        )
    took = time.monotonic() - progress.cancelled_at
    # cancelled at the first band's end (how many others ended with it is timing: the four
    # bands are a write unit each, so `< 8` here could never fail and is not claimed)
    assert progress.advances
    processing = client.processing()
    assert not [k for keys in processing.values() for k in keys if str(k).startswith("band-c")]
    assert took < STOP_GRACE_S  # the running bands stopped, not waited out


def test_a_band_that_starts_after_the_slide_failed_does_nothing(
    client, tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask
) -> None:
    from distributed import Event

    job, specs = four_units_job(tmp_path / "p.zarr", tiny_model_dir, four_units)
    Event("band-test-abort", client=client).set()
    try:
        band = client.submit(
            run_band, job, specs, "band-test-abort", cluster_plan(band_options(1)), False
        ).result()
    finally:
        Event("band-test-abort", client=client).clear()
    assert band.aborted and band.outcomes == []
    assert not stored(job).any()  # nothing written


@pytest.fixture(scope="module")
def cmu_region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A QuPath region of the CMU slide where four write units meet (--roi: `CORNER`): the
    segment_slide runs check where bands run and that their files equal a local run's,
    which a corner of the slide's tissue shows as well as all of it (still several write
    units, so several bands)."""
    from tests.wsi import qupath_exports as qp

    corner = qp.annotation(qp.rect(*CORNER), "corner")
    return qp.export(tmp_path_factory.mktemp("roi") / "corner.geojson", [corner])


def _segment_common(tiny_model_dir: Path, roi: Path) -> dict:
    """The parameters of the local and the band runs of the CMU slide's region `roi`."""
    # torch: the bands' orchestration; auto on a cluster is test_dask.py's
    common = {"model_dir": tiny_model_dir, "device": "cpu", "precision": "fp32", "roi": roi}
    return common | {"batch_size": 1, "chunk_tiles": 2, "runtime": "torch"}


@pytest.fixture(scope="module")
def local_cmu(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, cmu_region) -> Path:
    """The CMU slide's region segmented in this process, once for every source's band run
    (only read)."""
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    out = tmp_path_factory.mktemp("local-cmu")
    cores = len(os.sched_getaffinity(0))
    local = SegmentParams(threads=cores, decoders=0, **_segment_common(tiny_model_dir, cmu_region))
    assert segment_slide(CMU_SLIDE, out, local).status == "done"  # one torch thread a chunk
    return out


@pytest.mark.parametrize(
    # decoder processes on workers: test_bands_on_workers_write_what_local_runs_write's
    "name",
    [pytest.param("decoders", marks=pytest.mark.slow), "reader-thread"],
)
def test_segment_slide_with_a_client_runs_bands(
    client, local_cmu: Path, cmu_region: Path, tmp_path: Path, tiny_model_dir: Path, name: str
) -> None:
    """Through `segment_slide`: with a client, bands go to the workers (with `--decoders 1`
    decoder processes, by default the reader thread), and every output file equals the
    single-process run's (both of the slide's region `cmu_region`)."""
    from distributed import get_task_stream

    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    common = _segment_common(tiny_model_dir, cmu_region)
    cores = len(os.sched_getaffinity(0))
    with get_task_stream(client=client) as stream:
        result = segment_slide(
            CMU_SLIDE,
            tmp_path / "bands",
            SegmentParams(decoders=SOURCES[name], **common),
            client=client,
        )
    assert result.status == "done"
    assert any(str(t["key"]).startswith("band-") for t in stream.data)
    assert not any(str(t["key"]).startswith("chunk-") for t in stream.data)
    name = CMU_SLIDE.stem
    assert output_files(tmp_path / "bands" / name) == output_files(local_cmu / name)
    a, b = stable_summary(tmp_path / "bands" / name), stable_summary(local_cmu / name)
    for summary in (a, b):
        summary["parameters"].pop("decoders")
    assert a == b
    # every band decided its policy on its worker; the workers are alike: one policy
    policy = result.summary["run_policy"]
    assert policy["place"] == "cluster"
    assert policy["chunk_tiles"] == {"value": 2, "reason": "asked for (--chunk-tiles 2)"}
    [band] = policy["band_policies"]
    assert len(band["bands"]) > 1 and band["bands"] == list(range(len(band["bands"])))
    assert band["place"] == "band" and band["device"]["value"] == "cpu"
    asked = result.summary["parameters"]["decoders"]
    assert band["read_source"] == ("decoder processes" if asked else "reader thread")
    assert band["cores"]["value"] == max(1, cores // 2)  # two bands at once on this machine


@pytest.mark.slow  # a whole slide on the cluster a second time
def test_bands_read_on_the_device_where_the_slide_allows_it(
    client, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`--read-device gpu` reaches the workers: each band reads the slide's JPEG tiles onto
    the model's device (libjpeg on the CPU) and the slide comes out as a local run writes it.
    A 500 px square across four of the slide's 512 px storage tiles (--roi): the reads are
    the subject, and the whole slide is 324 model tiles of forward passes per run."""
    from tests.pipeline.inference.test_read_device import OME_TIFF, level0_params
    from tests.wsi import qupath_exports as qp
    from wsi_segment.pipeline.segment import segment_slide

    roi = qp.export(tmp_path / "roi.geojson", [qp.annotation(qp.rect(300, 300, 800, 800), "r")])
    one_torch_thread_each = min(256, len(os.sched_getaffinity(0)))
    local = segment_slide(
        OME_TIFF,
        tmp_path / "local",
        level0_params(tiny_model_dir, "gpu", threads=one_torch_thread_each, roi=roi),
    )
    bands = segment_slide(
        OME_TIFF, tmp_path / "bands", level0_params(tiny_model_dir, "gpu", roi=roi), client=client
    )
    for result in (local, bands):
        assert result.status == "done" and result.out_dir is not None
        run_stats = result.summary["run_stats"]
        assert (run_stats["read_device"], run_stats["read_device_reason"]) == ("gpu", "libjpeg")
    assert bands.out_dir is not None and local.out_dir is not None
    assert output_files(bands.out_dir) == output_files(local.out_dir)


@pytest.fixture(scope="module")
def whole_reference(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """`reference` of the slide's whole tissue (29 chunks, 100 tiles): bands long enough
    for a worker to be killed in the middle of one."""
    job, specs = band_job(tmp_path_factory.mktemp("ref-whole") / "p.zarr", tiny_model_dir)
    outcomes = one_torch_thread_reference(job, specs)
    return stored(job), outcomes


@pytest.mark.slow  # the killed worker is restarted by its nanny: another torch import
@pytest.mark.parametrize("name", list(SOURCES))
def test_a_worker_killed_mid_band_still_gives_identical_outputs(
    client, whole_reference, tmp_path: Path, tiny_model_dir: Path, name: str
) -> None:
    """The scheduler recomputes the lost band elsewhere; it rewrites the same zarr chunks.
    The restarted worker is non-daemonic too (the setting holds while the cluster runs)."""
    expected, expected_outcomes = whole_reference
    job, specs = band_job(tmp_path / "p.zarr", tiny_model_dir)
    pids = client.run(os.getpid)
    killed: list[int] = []
    stop = threading.Event()

    def kill_a_worker_running_a_band() -> None:
        while not stop.is_set() and not killed:
            for addr, keys in client.processing().items():
                if any(str(k).startswith("band-kill") for k in keys):
                    time.sleep(0.5)  # into the band: reading started
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(pids[addr])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_running_a_band, daemon=True)
    killer.start()
    try:
        outcomes = run_bands(
            job,
            specs,
            client,
            cluster_plan(band_options(SOURCES[name])),
            key_prefix=f"band-kill-{name}",
        )
    finally:
        stop.set()
        killer.join()
    assert killed
    np.testing.assert_array_equal(stored(job), expected)
    assert_same_outcomes(outcomes, expected_outcomes)
    client.wait_for_workers(2, timeout=120)
    assert list(client.run(_daemonic).values()) == [False, False]


def _pin_threads_to(cpus: set[int]) -> int:
    """Every thread of this process on `cpus` (Linux affinity is per thread): the cores
    this worker's machine has from now on, as a container or job would give it."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), cpus)
    return len(cpus)


def test_a_band_re_decides_only_the_worker_specific_decisions(
    client, tmp_path: Path, tiny_model_dir: Path, four_units: TissueMask
) -> None:
    """The client ships one plan; each band re-decides on its worker, by `decide`, only
    run_policy.WORKER_DECISIONS, from that worker's own machine and place
    (run_policy.WORKER_FACTS): two workers given different cores run the shipped plan
    re-decided for each (`run_policy.for_worker`), differing from it and from each other
    only in those decisions, with the shipped runtime and precision, reasons included. The
    test hands each worker one band itself (`run_band` pinned, with the per-host counts
    `run_bands` gives its bands), so a busy machine's scheduling cannot put both on one
    worker; `run_bands`' own placement is tested above."""
    import dataclasses

    from wsi_segment.pipeline.inference.band_runner import _slots
    from wsi_segment.pipeline.machine import probe_machine
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.run_policy import WORKER_DECISIONS, for_worker

    machine = probe_machine()
    if machine.cores < 2:
        pytest.skip("needs 2 cores to give one worker fewer")
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    assert len(workers) == 2, workers
    one = workers[0]
    everything = set(range(os.cpu_count() or 1))
    job, specs = four_units_job(tmp_path / "bands.zarr", tiny_model_dir, four_units)  # torch
    options = SegmentParams(device="cpu", batch_size=1, runtime="torch", precision="fp32")
    shipped = cluster_plan(options)  # what the client decided, for every band
    at_once, gpu = _slots(client)  # what run_bands hands its bands
    runs = contiguous_runs(specs, 2)  # one band on each worker, whatever the scheduler's load
    assert client.run(_pin_threads_to, {0}, workers=[one]) == {one: 1}
    try:
        futures = [
            client.submit(
                run_band, job, [specs[i] for i in run], None, shipped, gpu, at_once, workers=[w]
            )
            for w, run in zip(workers, runs, strict=True)
        ]
        bands: list[BandResult] = client.gather(futures)
    finally:
        client.run(_pin_threads_to, everything, workers=[one])
    policies = [b.policy for b in bands]
    assert {p["machine"]["cores"] for p in policies} == {1, machine.cores}  # both workers
    worker_keys = {"machine", "place", "read_source", *WORKER_DECISIONS}
    for policy in policies:  # the shipped plan, re-decided there from the worker's machine
        worker = dataclasses.replace(machine, cores=policy["machine"]["cores"])
        # at once on this host: the two workers' one thread each
        facts = {"at_once": 2, "reads": None, "daemonic": False, "worker_bands": 1}
        assert policy == for_worker(shipped, worker, **facts).as_dict()
        assert {k: v for k, v in policy.items() if k not in worker_keys} == {
            k: v for k, v in shipped.as_dict().items() if k not in worker_keys
        }
        assert policy["precision"] == shipped.precision.as_dict()
        assert policy["runtime"] == shipped.runtime.as_dict()
    by_cores = {p["machine"]["cores"]: p for p in policies}
    small, big = by_cores[1], by_cores[machine.cores]
    differ = {k for k in small if small[k] != big[k]}
    assert "cores" in differ and differ <= {"machine", *WORKER_DECISIONS}


def _sleep_then(value: int, seconds: float, release: str | None = None) -> int:
    """`value` after `seconds`, or as soon as the cluster-wide event `release` is set."""
    if release is None:
        time.sleep(seconds)
    else:
        from distributed import Event

        Event(release).wait(timeout=seconds)
    return value


def test_a_future_the_client_loses_is_one_error_that_says_so_and_is_never_recorded(
    client,
) -> None:
    """A task the client loses (here cancelled, as a dropped scheduler connection cancels
    every future) ends the wait with one error naming the cause, not distributed's
    `UnboundLocalError` from its `sync`; a finished one gives its value. The lost task
    would run 30 s; once the wait has ended it is released, so that it does not hold its
    worker (and the cluster's close) for the rest of that time."""
    from distributed import Event

    from wsi_segment.pipeline.inference.band_runner import future_result

    assert future_result(client.submit(_sleep_then, 7, 0.0, pure=False), Cancellation()) == 7
    release = Event("lost-task-release", client=client)
    lost = client.submit(_sleep_then, 1, 30.0, release.name, pure=False)
    threading.Timer(0.5, client.cancel, [lost]).start()
    started = time.monotonic()
    try:
        with pytest.raises(ClusterLost, match="scheduler lost this slide's task") as lost_error:
            future_result(lost, Cancellation())
        assert not recurs(error_class_of(lost_error.value))  # the cluster's, not the slide's
        assert time.monotonic() - started < 20
    finally:
        release.set()


def test_a_cluster_s_machine_is_one_of_its_workers_own_description(client) -> None:
    """The machine a Dask run's plan is decided for (`prepare`'s `cluster`) is what a
    worker probes there, not the client's own."""
    from wsi_segment.pipeline.inference.band_runner import cluster_machine
    from wsi_segment.pipeline.machine import probe_machine

    described = client.run(probe_machine)
    assert len(described) == 2
    assert cluster_machine(client, Cancellation()) in described.values()
