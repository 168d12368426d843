"""`prepare` stopped between its steps by a real cancellation token (a batch's stop): the
stop's reason is raised, and what prepare started (the model's load, the overlay
thumbnail's read, the prefetcher) has ended when it is."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, TINY_TILE, run_geometry
from wsi_segment.errors import SlideInterrupted
from wsi_segment.pipeline.cancellation import Cancellation
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import prepare


class CancelledAtCheck(Cancellation):
    """A cancellation that cancels itself (an interrupt) at its `at`th check: a batch's stop
    landing at a chosen step of the run."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.checks = at, 0

    def check(self) -> None:
        self.checks += 1
        if self.checks == self.at:
            self.cancel(SlideInterrupted)
        super().check()


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
