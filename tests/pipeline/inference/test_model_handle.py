"""The per-process model cache and handles: what a loaded model depends on is the recipe's
values; the plan's reasons ride along and never load a model again."""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import threading
from pathlib import Path

import pytest

from tests.conftest import (
    LOCAL_FACTS,
    TINY_TILE,
    plan_spec,
    run_geometry,
    torch_spec,
)
from wsi_segment.pipeline.inference.model_handle import ModelHandle, load_for_process


@pytest.fixture
def own_model_dir(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model in a folder of this test's own (so a process cache entry of its own:
    nothing another test loaded stands in), with an empty runtime cache (a cold machine)."""
    monkeypatch.setenv("WSI_SEGMENT_CACHE_DIR", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    return model_dir


def test_the_cache_keys_on_the_decided_values_not_on_their_reasons(tiny_model_dir: Path) -> None:
    folder = str(tiny_model_dir)
    spec = torch_spec("fp32")
    first = load_for_process(folder, "cpu", spec)
    reworded = dataclasses.replace(spec, runtime_reason="c", precision_reason="d")
    assert load_for_process(folder, "cpu", reworded) is first  # nothing loaded again
    other = load_for_process(folder, "cpu", torch_spec("bf16"))
    assert other.model is not first.model and other.runtime.precision == "bf16"


def test_handles_differing_only_in_their_reasons_have_one_recipe() -> None:
    handle = ModelHandle("m", "cpu", torch_spec("fp32"))
    reworded = dataclasses.replace(
        handle, spec=dataclasses.replace(handle.spec, precision_reason="worded otherwise")
    )
    assert reworded == handle
    assert dataclasses.replace(handle, spec=torch_spec("bf16")) != handle


def test_a_handle_travels_as_its_recipe(tiny_model_dir: Path) -> None:
    handle = ModelHandle(str(tiny_model_dir), "cpu", torch_spec("fp32"))
    loaded = handle.get()
    copy = pickle.loads(pickle.dumps(handle))
    assert copy._loaded is None and copy == handle
    again = copy.get()  # this process's cache: the same model and lock
    assert again.model is loaded.model and again.lock is loaded.lock


def test_handles_sharing_a_load_each_report_their_own_reasons(tiny_model_dir: Path) -> None:
    """The process loads once for specs equal in value, yet summary.json says each run's own
    plan's words (a batch's and a band's reasons differ: "pinned for the cluster")."""
    folder = str(tiny_model_dir)
    first = ModelHandle(folder, "cpu", torch_spec("fp32")).get()
    spec = dataclasses.replace(
        torch_spec("fp32"), runtime_reason="torch: pinned", precision_reason="fp32: pinned"
    )
    second = ModelHandle(folder, "cpu", spec).get()
    assert second.model is first.model and second.lock is first.lock
    assert first.runtime.report()["reason"] == "fp32: a test's"
    assert (second.runtime.report()["reason"], second.runtime.reason) == (
        "fp32: pinned",
        "torch: pinned",
    )


def test_the_spec_s_cuda_graphs_choose_the_executor_built_once_per_geometry_and_batch(
    tiny_model_dir: Path,
) -> None:
    """The plan's `cuda_graphs` reaches models/ in the spec alone: with it the runtime builds
    the graph executor (its capture waits for a first batch on CUDA), without it the eager
    one; a loaded model builds each (geometry, batch) once, for every slide it serves."""
    from wsi_segment.models.runtimes.executor import CudaGraphExecutor, TorchExecutor
    from wsi_segment.models.runtimes.tile_io import Geometry

    folder, geometry = str(tiny_model_dir), Geometry(64, 8, 48, 4, True)
    graphs = load_for_process(folder, "cpu", dataclasses.replace(torch_spec(), cuda_graphs=True))
    eager = load_for_process(folder, "cpu", torch_spec())
    assert graphs is not eager  # another recipe: another load
    built = graphs.executor(geometry, 16, None)
    assert isinstance(built, CudaGraphExecutor) and built.batch == 16
    assert graphs.runtime.report()["cuda_graphs"] is True
    on_two = eager.executor(geometry, 16, 2)
    assert isinstance(on_two, TorchExecutor) and on_two.threads == 2
    assert eager.runtime.report()["cuda_graphs"] is False
    assert graphs.executor(geometry, 16, None) is built
    assert graphs.executor(geometry, 8, None) is not built
    assert eager.executor(geometry, 16, 1) is not on_two  # another share of the cores


# summary.json `precision.runtime_cache` of a load that took nothing from the runtime cache
NOTHING_CACHED = {"graphs_compiled": 0, "graphs_loaded": 0, "checks_computed": 0}
# ... of an OpenVINO fp32 run on a cold cache: compiled for the fp32 check (at the calibration
# tiles' batch) and for the run's batch, one check, the network built to export the graph
COLD_OPENVINO_LOAD = {**NOTHING_CACHED, "graphs_compiled": 2, "checks_computed": 1}
COLD_OPENVINO_LOAD["network_built"] = True


# openvino: two whole runs from a cold cache (~45 s), slow; torch checks the same sharing and
# test_openvino_runtime what a cold and a warm OpenVINO load take from the cache
@pytest.mark.parametrize("runtime", ["torch", pytest.param("openvino", marks=pytest.mark.slow)])
def test_the_slides_a_process_runs_share_the_executor_the_plan_sized(
    own_model_dir: Path, tmp_path: Path, runtime: str, cmu_region_slide: Path
) -> None:
    """Two slides in one process (a batch): their engines run one executor, at the run's
    geometry, the plan's batch and each compute thread's share of the cores; the second
    compiles nothing (OpenVINO) and builds nothing. On a crop of CMU, all of it tissue: the
    executor, not the slide's size, is the subject."""
    from wsi_segment.pipeline.inference.compute_stage import compute_threads_cores
    from wsi_segment.pipeline.machine import probe_machine
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.run_policy import decide, runtime_spec
    from wsi_segment.pipeline.segment import segment_slide

    model_dir = own_model_dir
    params = SegmentParams(
        model_dir=model_dir, device="cpu", runtime=runtime, precision="fp32", mpp=0.499,
        tissue="all",
    )  # fmt: skip
    first = segment_slide(cmu_region_slide, tmp_path / "first", params)
    assert first.status == "done"
    geometry = run_geometry(TINY_TILE)
    spec = runtime_spec(decide(probe_machine(), params, LOCAL_FACTS), geometry)
    loaded = load_for_process(str(model_dir), "cpu", spec)  # the process's: loads nothing
    policy = first.summary["run_policy"]  # the plan the run recorded
    ran = {name: policy[name]["value"] for name in ("cores", "compute_threads", "batch_size")}
    share = compute_threads_cores(ran["cores"], ran["compute_threads"])
    key = (geometry, ran["batch_size"], share)
    assert list(loaded.executors) == [key]
    built = loaded.executors[key]
    # a cold cache: OpenVINO exported the graph from the network built for it, compiled it for
    # the fp32 check (its batch: the calibration tiles) and for the run's batch; torch built it
    cold = first.summary["precision"]["runtime_cache"]
    if runtime == "openvino":
        assert cold == COLD_OPENVINO_LOAD
    else:
        assert cold == {**NOTHING_CACHED, "network_built": True}
    second = segment_slide(cmu_region_slide, tmp_path / "second", params)
    assert second.status == "done"
    assert list(loaded.executors) == [key] and loaded.executors[key] is built
    assert second.summary["precision"]["runtime_cache"] == cold  # nothing more: no compile


@pytest.mark.parametrize(
    "runtime",
    [
        "torch",
        # slow: a cold OpenVINO load (export, check, compile); [torch] covers the one load,
        # which `ProcessModels.get` holds its lock around whatever the runtime
        pytest.param("openvino", marks=pytest.mark.slow),
    ],
)
def test_slides_starting_at_once_load_the_model_once(own_model_dir: Path, runtime: str) -> None:
    """A batch starts its first slides together (`concurrency`, 2 by default), each loading
    the model in its own thread: they get one load, so one lock (a GPU runs one forward pass
    at a time) and one copy of the weights, not one each."""
    model_dir = own_model_dir
    spec = plan_spec("fp32", runtime)
    start = threading.Barrier(2)
    loaded: list[object] = []

    def load() -> None:
        start.wait()
        loaded.append(load_for_process(str(model_dir), "cpu", spec))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 2
    assert loaded[0] is loaded[1], "each thread loaded a model of its own"


def test_plans_decided_from_the_first_load_s_verdict_reuse_that_load(own_model_dir: Path) -> None:
    """On a CPU with bf16 (described: AMX) a cold plan hands the loader bf16-if-calibrated;
    the load calibrates and keeps the verdict, and the plans after it (a batch's later
    slides, a Dask band after the client's calibration) decide bf16 or fp32 from it. They
    run what that load opened: the same model, lock and executors, not a second copy."""
    from wsi_segment.pipeline.machine import GIB, Machine
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.run_policy import decide_for_model, runtime_spec

    model_dir = str(own_model_dir)
    amx = Machine(cores=2, memory_bytes=8 * GIB, cpu_flags=frozenset({"avx2", "amx_bf16"}))
    options = SegmentParams(device="cpu", runtime="torch")  # precision auto
    geometry = run_geometry(TINY_TILE)
    cold = runtime_spec(decide_for_model(amx, options, LOCAL_FACTS, model_dir), geometry)
    assert cold.precision == "bf16-if-calibrated"
    first = ModelHandle(model_dir, "cpu", cold).get()
    warm = runtime_spec(decide_for_model(amx, options, LOCAL_FACTS, model_dir), geometry)
    assert warm.precision == first.runtime.precision  # decided from the kept verdict
    again = ModelHandle(model_dir, "cpu", warm).get()
    assert again.model is first.model and again.lock is first.lock
    assert again.runtime.report() == first.runtime.report()
