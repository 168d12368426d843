"""`prepare` stopped between its steps by a real cancellation token (a batch's stop): the
stop's reason is raised, and what prepare started (the model's load, the overlay
thumbnail's read, the prefetcher) has ended when it is."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE
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
