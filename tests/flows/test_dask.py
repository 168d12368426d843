"""Batches on a real distributed.LocalCluster with worker processes, including a worker death."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import plan_spec, what_ran
from tests.flows.conftest import output_files, stable_summary

# one tile per chunk: many small chunks, so a worker can die while others are pending;
# fp32 because bytes are compared with a single-process run, which times its own
# precision trial under 'auto' (the CLI test below runs 'auto' on the cluster); the CPU
# because that comparison needs the same arithmetic on both sides (see `reference`)
OPTIONS = {"chunk_tiles": 1, "precision": "fp32", "device": "cpu"}


def test_plan_local_cluster_sizes() -> None:
    from wsi_segment.flows.dask_cluster import plan_local_cluster

    assert plan_local_cluster(n_gpus=0, n_cpus=2).n_workers == 1
    cpu = plan_local_cluster(workers=2, n_gpus=0, n_cpus=8)
    assert (cpu.n_workers, cpu.threads_per_worker, cpu.gpus) == (2, 4, ())
    gpu = plan_local_cluster(n_gpus=2, n_cpus=16)
    assert (gpu.n_workers, gpu.threads_per_worker, gpu.gpus) == (2, 8, (0, 1))
    assert plan_local_cluster(workers=1, n_gpus=4, n_cpus=4).gpus == (0,)


@pytest.fixture(scope="module")
def cluster_client() -> Iterator:
    """A real LocalCluster: 2 worker processes, 1 thread each, shared by this module's tests."""
    from wsi_segment.flows.dask_cluster import dask_client

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dask_client(workers=2, threads=1) as client:
            client.wait_for_workers(2, timeout=120)
            _assert_no_dashboard(client.cluster, caught)
            _assert_worker_allocator(client)
            yield client


def _spawn_malloc_env() -> dict[str, str]:
    """MALLOC_* of this process as it was spawned (what glibc read), not os.environ."""
    raw = Path("/proc/self/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if item.startswith(b"MALLOC_"))
    return {k: v for k, _, v in pairs}


def _assert_worker_allocator(client) -> None:
    """Workers are spawned with two malloc arenas and without Dask's eager trim threshold
    (flows/allocator.py), read from what each worker process was started with."""
    seen = client.run(_spawn_malloc_env)
    expected = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    expected.setdefault("MALLOC_ARENA_MAX", "2")
    assert list(seen.values()) == [expected] * 2


def _assert_no_dashboard(cluster, caught: list[warnings.WarningMessage]) -> None:
    """The scheduler's HTTP server is on a free loopback port, not the dashboard's :8787."""
    http = cluster.scheduler.http_server
    assert (http.address, http.port != 8787) == ("127.0.0.1", True)
    # scheduler and workers listen on loopback only: a local cluster is not a network service
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    for worker in cluster.workers.values():
        assert worker.address.startswith("tls://127.0.0.1:"), worker.address
    assert not [w for w in caught if "8787" in str(w.message)]


@pytest.fixture(scope="module")
def reference(tiny_model: Path, slides_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Outputs of the plain single-process pipeline, to compare the cluster runs with.

    As many compute threads as cores, so each forward pass runs on one torch thread as on the
    cluster's workers (Dask starts them with OMP_NUM_THREADS=1): the last bits of a forward
    pass may depend on its thread count, and the bytes are compared exactly."""
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    out = tmp_path_factory.mktemp("reference")
    params = SegmentParams(
        model_dir=tiny_model, threads=min(256, len(os.sched_getaffinity(0))), **OPTIONS
    )
    for name in ("synth-a.tif", "synth-b.tif"):
        assert segment_slide(slides_dir / name, out, params).status == "done"
    return out


def _assert_same(out: Path, reference: Path) -> None:
    for name in ("synth-a", "synth-b"):
        assert output_files(out / name) == output_files(reference / name), name
        assert stable_summary(out / name) == stable_summary(reference / name), name


def test_batch_on_local_cluster_matches_single_process(
    prefect_harness: None,
    cluster_client,
    reference: Path,
    tiny_model: Path,
    slides_dir: Path,
    tmp_path: Path,
) -> None:
    from wsi_segment.flows.batch_flow import segment_batch

    results = segment_batch(
        input=str(slides_dir),
        out=str(tmp_path / "out"),
        model_dir=str(tiny_model),
        dask_address=cluster_client.scheduler.address,
        options=OPTIONS,
    )
    assert [r.status for r in results] == ["done", "done"]
    _assert_same(tmp_path / "out", reference)


def test_cli_batch_with_dask_address_runs_on_that_scheduler(
    prefect_harness: None,
    cluster_client,
    tiny_model: Path,
    slides_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`wsi-segment batch --dask-address` sends the chunks, in bands, to that (running)
    scheduler; with `PREFECT_API_URL` naming a server (the session's), as a run of the
    `segment-batch` flow there, whose parameters are the command line's."""
    from distributed import get_task_stream
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    from wsi_segment.flows.cli import main
    from wsi_segment.models.bundle import load_bundle
    from wsi_segment.models.cpu import AMX_FLAG, cpu_flags
    from wsi_segment.models.runtimes.select import open_runtime

    address = cluster_client.scheduler.address
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    out = tmp_path / "out"
    args = ["batch", str(slides_dir / "synth-b.tif"), "--out", str(out), "--model", str(tiny_model)]
    with get_task_stream(client=cluster_client) as stream:
        code = main([*args, "--dask-address", address, "--workers", "3", "--concurrency", "1"])
    assert code == 0
    assert "| done |" in capsys.readouterr().out
    # precision auto: the plan settled with one worker's calibration, run by every band
    precision = json.loads((out / "synth-b" / "summary.json").read_text())["precision"]
    alone = open_runtime(load_bundle(tiny_model), plan_spec("auto", "auto")).report()
    assert what_ran(precision) == json.loads(json.dumps(alone))  # the runtime too
    if AMX_FLAG in cpu_flags() or precision["calibration"] is not None:
        assert precision["device"] == "cpu" and precision["calibration"]["tiles"] == 6
        assert precision["autocast"] == precision["calibration"]["chosen"]
    else:
        assert (precision["autocast"], precision["calibration"]) == ("fp32", None)
    assert any(str(task["key"]).startswith("band-") for task in stream.data)
    # every band ran the one plan the client shipped (band_runner.settle_plan, for_worker)
    bands = json.loads((out / "synth-b" / "summary.json").read_text())["run_policy"]
    assert bands["band_policies"]
    for band in bands["band_policies"]:
        assert band["runtime"]["value"] == precision["runtime"]
        assert band["precision"]["value"] == precision["autocast"]
        assert (
            f"{band['precision']['value']}: {band['precision']['reason']}" == (precision["reason"])
        )
    # the scheduler is still running after the CLI's client left
    assert len(cluster_client.scheduler_info()["workers"]) == 2
    # what the flow run recorded, as Prefect's API reports it
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["segment-batch"])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
    assert run.state.is_completed()
    params = run.parameters
    assert params["input"] == str(slides_dir / "synth-b.tif") and params["out"] == str(out)
    assert (params["dask_address"], params["workers"], params["concurrency"]) == (address, 3, 1)


@pytest.mark.slow  # a killed worker is restarted by its nanny: another torch import and model load
def test_worker_killed_mid_run_still_gives_identical_outputs(
    prefect_harness: None,
    cluster_client,
    reference: Path,
    tiny_model: Path,
    slides_dir: Path,
    tmp_path: Path,
) -> None:
    from wsi_segment.flows.batch_flow import segment_batch

    pids = cluster_client.run(os.getpid)  # worker address -> process id
    killed: list[int] = []
    stop = threading.Event()

    def kill_a_busy_worker() -> None:
        while not stop.is_set() and not killed:
            busy = [addr for addr, keys in cluster_client.processing().items() if keys]
            for addr in busy:
                if any(str(k).startswith("band-") for k in cluster_client.processing()[addr]):
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(pids[addr])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    try:
        results = segment_batch(
            input=str(slides_dir),
            out=str(tmp_path / "out"),
            model_dir=str(tiny_model),
            dask_address=cluster_client.scheduler.address,
            concurrency=1,
            options=OPTIONS,
        )
    finally:
        stop.set()
        killer.join(timeout=5)
    assert killed, "no worker was busy with a band to kill"
    assert [r.status for r in results] == ["done", "done"]
    _assert_same(tmp_path / "out", reference)


def test_gpu_plan_pins_one_device_per_worker() -> None:
    """GPU workers (started here without GPUs) each see one device and offer GPU=1."""
    from distributed import Client

    from wsi_segment.flows.dask_cluster import ClusterPlan, start_local_cluster

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = ClusterPlan(n_workers=2, threads_per_worker=1, gpus=(0, 1))
        cluster = start_local_cluster(plan)
    try:
        _assert_no_dashboard(cluster, caught)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
            assert sorted(seen.values()) == ["0", "1"]
            workers = client.scheduler_info()["workers"].values()
            assert all(w["resources"] == {"GPU": 1} for w in workers)
    finally:
        cluster.close()
