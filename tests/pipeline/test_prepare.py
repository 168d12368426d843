"""`prepare` stopped between its steps by a real cancellation token (a batch's stop): the
stop's reason is raised, and what prepare started (the model's load, the overlay
thumbnail's read, the prefetcher) has ended when it is."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from tests.cancel_points import CancelledAtCheck
from tests.conftest import CMU_SLIDE, LOCAL_FACTS, TINY_TILE, run_geometry
from wsi_segment.errors import SlideInterrupted
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED
from wsi_segment.pipeline.machine import probe_machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import _wait_for_model, prepare
from wsi_segment.pipeline.prepare_inputs import open_checked_slide, read_model_folder
from wsi_segment.pipeline.progress import NullProgress
from wsi_segment.pipeline.run_start import ReadyModel, RunStart
from wsi_segment.pipeline.threads import Background

# the threads prepare starts: the model's load, the overlay thumbnail's read, the prefetcher
PREPARE_THREADS = {"load_for_process", "read_overlay_thumbnail", "tile-prefetch"}


def prepare_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in PREPARE_THREADS]


@pytest.mark.parametrize("at", [1, 2, 3], ids=["slide-opened", "tissue-detected", "model-loaded"])
def test_a_stop_between_prepares_steps_leaves_nothing_running(
    tmp_path: Path, tiny_model_dir: Path, at: int
) -> None:
    params = SegmentParams(model_dir=tiny_model_dir, device="cpu", precision="fp32")
    cancel = CancelledAtCheck(at)
    with pytest.raises(SlideInterrupted):
        prepare(CMU_SLIDE, tmp_path / "out", params, early=True, cancel=cancel)
    assert cancel.checks == at  # stopped at that step, no later one
    assert prepare_threads() == []
    assert not (tmp_path / "out").exists()  # prepare writes nothing


def test_a_token_never_cancelled_prepares_the_slide(tmp_path: Path, tiny_model_dir: Path) -> None:
    params = SegmentParams(model_dir=tiny_model_dir, device="cpu", precision="fp32")
    cancel = CancelledAtCheck(0)  # counts its checks, never cancels
    prep = prepare(CMU_SLIDE, tmp_path / "out", params, early=True, cancel=cancel)
    try:
        assert cancel.checks == 3 and prep.specs
    finally:
        prep.close_prefetch()
        prep.slide.close()


def test_a_cluster_s_plan_is_decided_for_its_workers_machine(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A Dask run's client plans for the machine its workers describe
    (`band_runner.cluster_machine`), not for its own: GPU workers under a CPU-only client get
    a GPU plan (device, chunk size, runtime, precision). The client reads the model's
    files for their identity and metadata only: the handle it ships is the plan's recipe,
    which each band opens on its worker."""
    from wsi_segment.models.meta import model_files_identity
    from wsi_segment.pipeline.inference.model_handle import ModelHandle
    from wsi_segment.pipeline.machine import GIB, Gpu, Machine
    from wsi_segment.pipeline.run_policy import runtime_spec

    h100 = Gpu("NVIDIA H100 80GB HBM3", 80 * GIB)
    workers = Machine(cores=16, memory_bytes=128 * GIB, cpu_flags=frozenset({"avx2"}), gpus=(h100,))
    prep = prepare(CMU_SLIDE, tmp_path / "out", SegmentParams(model_dir=tiny_model_dir),
                   cluster=workers)  # fmt: skip
    try:
        plan = prep.policy
        assert plan is not None and (plan.place, plan.machine) == ("cluster", workers)
        assert (plan.device.value, plan.chunk_tiles.value) == ("cuda", 8)
        assert (plan.runtime.value, plan.precision.value) == ("torch", "bf16")
        sides = {(s.core_box[2] - s.core_box[0]) // prep.grid.stride for s in prep.specs}
        assert sides == {8}  # planned in chunks of 8 x 8 tiles
        identity, _meta = model_files_identity(tiny_model_dir)
        recipe = ModelHandle(
            str(tiny_model_dir), "cuda", runtime_spec(plan, run_geometry(TINY_TILE)), identity
        )
        assert prep.model == recipe and prep.model.identity == identity
    finally:
        prep.close_prefetch()
        prep.slide.close()


class _NotedLines(NullProgress):
    """A progress that keeps its notes, and lets a held load go on once it is told of it."""

    def __init__(self, noted: threading.Event) -> None:
        self.lines: list[str] = []
        self._noted = noted

    def note(self, text: str) -> None:
        self.lines.append(text)
        self._noted.set()


@pytest.mark.parametrize("still_loading", [True, False])
def test_a_wait_for_the_model_is_noted_before_it_and_only_then(
    tiny_model_dir: Path, still_loading: bool
) -> None:
    """Planning done, a load still running is noted (`NAME: loading the model`) before the
    run waits for it; a load that has ended is not. The load here is the real one, held
    until the note arrives (or 30 s: no note, and the wait fails the test)."""
    machine = probe_machine()
    params = SegmentParams(model_dir=tiny_model_dir, device="cpu", runtime="torch", mpp=0.499)
    opened = open_checked_slide(str(CMU_SLIDE), params)
    model = read_model_folder(tiny_model_dir)
    started = RunStart.begin(opened, model, params, machine, LOCAL_FACTS, early=False)
    noted, loaded = threading.Event(), started.loader.result()

    def held_load() -> ReadyModel:
        assert noted.wait(30), "the wait for the model was not noted"
        return loaded

    if still_loading:
        started = dataclasses.replace(started, loader=Background(held_load))
    progress = _NotedLines(noted)
    try:
        ready = _wait_for_model("CMU", started, NEVER_CANCELLED, progress)
    finally:
        started.stop()
        opened.slide.close()
    assert ready is loaded
    assert progress.lines == (["CMU: loading the model"] if still_loading else [])
