"""The bf16 verdict is obtained once per model and machine: the first load calibrates and
keeps the numbers, and every later plan decides bf16 or fp32 from them before the model
loads (`run_policy.known_calibration`, which `decide_for_model` asks), so the loader is handed a decided precision."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, LOCAL_FACTS, TINY_TILE, run_geometry
from wsi_segment.models.bundle import load_bundle
from wsi_segment.models.meta import model_files_identity
from wsi_segment.models.runtimes.select import open_runtime
from wsi_segment.models.runtimes.verdict import calibration_key, store_verdict
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED
from wsi_segment.pipeline.inference.compute_stage import compute_threads_cores
from wsi_segment.pipeline.machine import GIB, Machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare_inputs import open_checked_slide, read_model_folder
from wsi_segment.pipeline.run_policy import (
    CLUSTER,
    LOCAL,
    RunFacts,
    calibration_numbers,
    decide,
    known_calibration,
    runtime_spec,
)
from wsi_segment.pipeline.run_start import RunStart

AMX = Machine(cores=2, memory_bytes=8 * GIB, cpu_flags=frozenset({"avx2", "amx_bf16", "amx_tile"}))
TORCH = SegmentParams(device="cpu", runtime="torch")  # precision auto: bf16-if-calibrated on AMX


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty runtime cache of this test's own (a cold machine)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("WSI_SEGMENT_CACHE_DIR", str(folder))
    return folder


PASSING = {  # numbers a bf16 calibration measures (models.precision_calibration)
    "agreement": 0.9991,
    "area_shifts": {"1": 0.004},
    "max_area_shift": 0.004,
    "own_patches": 0,
    "tile_size": 64,
    "tiles": 6,
}


def test_a_warm_plan_decides_precision_from_the_kept_verdict(
    tiny_model_dir: Path, cache: Path
) -> None:
    """A verdict kept for this model, runtime and CPU (as a first load keeps it, below) is
    found before anything loads; the plan decides bf16 from it and the loader, handed bf16,
    reports the verdict as the reason (it calibrates nothing: its precision is decided)."""
    cold = decide(AMX, TORCH, LOCAL_FACTS)
    assert cold.precision.value == "bf16-if-calibrated"
    assert known_calibration(RunFacts(), cold, str(tiny_model_dir)) == RunFacts()  # nothing yet
    identity, _meta = model_files_identity(tiny_model_dir)
    store_verdict(cache, calibration_key(identity, "torch", AMX.cpu_flags), PASSING)
    facts = known_calibration(RunFacts(), cold, str(tiny_model_dir))
    assert dict(facts.calibrations) == {"torch": PASSING}
    warm = decide(AMX, TORCH, facts)
    assert warm.precision.value == "bf16" and warm.as_dict()["calibration"] == PASSING
    spec = runtime_spec(warm, run_geometry(TINY_TILE))
    assert spec.precision == "bf16"
    report = open_runtime(load_bundle(tiny_model_dir), spec, cache).report()
    assert report["autocast"] == "bf16"
    assert report["reason"] == f"bf16: {warm.precision.reason}" == report["calibration"]["reason"]
    assert {k: report["calibration"][k] for k in PASSING} == PASSING


def test_a_verdict_holds_for_its_model_runtime_and_cpu_only(
    tiny_model_dir: Path, cache: Path, tmp_path: Path
) -> None:
    identity, _meta = model_files_identity(tiny_model_dir)
    store_verdict(cache, calibration_key(identity, "torch", AMX.cpu_flags), PASSING)
    cold = decide(AMX, TORCH, LOCAL_FACTS)
    assert known_calibration(RunFacts(), cold, str(tiny_model_dir)).calibrations
    other_cpu = Machine(cores=2, memory_bytes=8 * GIB, cpu_flags=AMX.cpu_flags | {"avx512f"})
    elsewhere = decide(other_cpu, TORCH, LOCAL_FACTS)
    assert not known_calibration(RunFacts(), elsewhere, str(tiny_model_dir)).calibrations
    with_openvino = dataclasses.replace(AMX, openvino=True)
    openvino = decide(with_openvino, SegmentParams(device="cpu", runtime="openvino"), LOCAL_FACTS)
    assert (openvino.runtime.value, openvino.precision.value) == ("openvino", "bf16-if-calibrated")
    assert not known_calibration(RunFacts(), openvino, str(tiny_model_dir)).calibrations
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed)
    doc = json.loads((changed / "model.json").read_text())
    doc["name"] = "another model"
    (changed / "model.json").write_text(json.dumps(doc))
    assert not known_calibration(RunFacts(), cold, str(changed)).calibrations


@pytest.mark.slow  # torch's bf16 on a CPU without it: a minute for the tiny model
def test_the_first_load_keeps_the_verdict_it_obtained(tiny_model_dir: Path, cache: Path) -> None:
    cold = decide(AMX, TORCH, LOCAL_FACTS)
    first = open_runtime(
        load_bundle(tiny_model_dir), runtime_spec(cold, run_geometry(TINY_TILE)), cache
    )
    assert first.calibration is not None and first.calibration.tiles == 6
    facts = known_calibration(RunFacts(), cold, str(tiny_model_dir))
    assert dict(facts.calibrations) == {"torch": calibration_numbers(first.calibration)}
    warm = decide(AMX, TORCH, facts)
    assert f"{warm.precision.value}: {warm.precision.reason}" == first.precision_reason


@pytest.mark.parametrize("place", [CLUSTER, LOCAL])
def test_only_a_local_plan_builds_the_network_and_the_executor_in_the_background(
    tiny_model_dir: Path, cache: Path, place: str
) -> None:
    """A cluster's plan reads and checks the model's files (identity, metadata) and opens no
    runtime: its bands open theirs, and build their executors, on their workers. A local
    plan opens the plan's runtime, here torch, which runs the network it builds, and the
    loader thread builds the engine's executor as the plan says: at the run's geometry,
    the plan's batch, under the model's lock where the plan says so."""
    machine = Machine(cores=2, memory_bytes=8 * GIB, cpu_flags=frozenset({"avx2"}))
    params = SegmentParams(device="cpu", runtime="torch", precision="fp32", decoders=0)
    opened = open_checked_slide(str(CMU_SLIDE), params)
    model = read_model_folder(tiny_model_dir)
    started = RunStart.begin(opened, model, params, machine, RunFacts(place=place), early=False)
    try:
        ready = started.loaded_model(NEVER_CANCELLED)
    finally:
        started.stop()
        opened.slide.close()
    handle, plan = ready.handle, ready.policy
    identity, expected_meta = model_files_identity(tiny_model_dir)
    assert (handle.identity, ready.meta, plan) == (identity, expected_meta, started.policy)
    assert handle.spec == runtime_spec(plan, run_geometry(TINY_TILE)) and handle.device == "cpu"
    assert handle.model_dir == str(tiny_model_dir)
    if place == CLUSTER:
        assert ready.executor is None
        return
    loaded = handle.get()
    assert loaded.runtime.network is not None and ready.executor is not None
    executor = ready.executor
    assert (executor.geometry, executor.batch) == (run_geometry(TINY_TILE), plan.batch_size.value)
    assert executor.lock is (loaded.lock if plan.model_lock.value else None)
    assert executor.torch_runs and executor.device == "cpu"
    share = compute_threads_cores(plan.cores.value, plan.compute_threads.value)
    assert executor.executor is loaded.executors[(executor.geometry, executor.batch, share)]
