"""Slides in flight in one process (a batch) share one loaded model and take turns on it:
every slide's handle holds the process's model *and its lock*, and the engine's compute
stage runs each forward pass under that lock, so two compute stages never run the model at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR
from wsi_segment.pipeline import segment
from wsi_segment.pipeline.inference.model_handle import ModelHandle, load_for_process
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import PreparedSlide

OS1_SLIDE = DATA_DIR / "OS-1-detail.ome.tif"


class TurnWatch:
    """The real model; records, per forward pass, whether the model's lock was held and how
    many forward passes ran at that moment (its own included). `hold_s`: each pass holds on
    that long, so passes that can overlap do."""

    def __init__(self, model, lock: threading.Lock, hold_s: float = 0.0) -> None:
        self.model, self.lock, self.device = model, lock, model.device
        self.hold_s = hold_s
        self.held: list[bool] = []
        self.running = 0
        self.most_at_once = 0
        self._count = threading.Lock()

    def predict_reduced(self, *args, **kwargs):
        with self._count:
            self.held.append(self.lock.locked())
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.hold_s)
            return self.model.predict_reduced(*args, **kwargs)
        finally:
            with self._count:
                self.running -= 1


@pytest.fixture
def params(tiny_model_dir: Path) -> SegmentParams:
    # decoders=1: decoder processes; one compute thread per slide, as on a GPU (on the CPU
    # more run side by side without the lock, by design); chunks of 2 x 2 tiles: several
    # batches per slide
    return SegmentParams(
        tiny_model_dir,
        device="cpu",
        precision="fp32",
        decoders=1,
        threads=1,
        chunk_tiles=2,
        batch_size=4,
    )


def prepared(slides: list[Path], tmp_path: Path, params: SegmentParams) -> list[PreparedSlide]:
    return [segment.prepare(slide, tmp_path / "out", params) for slide in slides]


def test_slides_of_one_process_share_the_model_and_its_lock(tmp_path, params) -> None:
    preps = prepared([CMU_SLIDE, OS1_SLIDE], tmp_path, params)
    try:
        h = preps[0].model  # the recipe the run policy gave (device, precision, runtime, cores)
        assert (h.model_dir, h.device, h.precision) == (str(params.model_dir), "cpu", "fp32")
        recipe = (h.runtime, h.decided_runtime, h.decided_precision, h.cores)
        loaded = load_for_process(h.model_dir, h.device, h.precision, *recipe)
        for prep in preps:
            model, lock = prep.model.get()
            assert model is loaded[0]
            assert lock is loaded[1]  # one lock per loaded model, not one per slide
    finally:
        for prep in preps:
            prep.slide.close()


def test_two_slides_compute_stages_take_turns_on_the_model(tmp_path, params) -> None:
    preps = prepared([CMU_SLIDE, OS1_SLIDE], tmp_path, params)
    model, lock = preps[0].model.get()
    watch = TurnWatch(model, lock)
    errors: list[BaseException] = []

    def infer(prep: PreparedSlide, work_dir: Path) -> None:
        try:
            segment.infer(prep, work_dir)
        except BaseException as exc:
            errors.append(exc)

    threads = []
    try:
        for i, prep in enumerate(preps):
            prep.model = ModelHandle.with_model(
                watch, str(params.model_dir), "cpu", "fp32", lock=lock
            )
            work_dir = tmp_path / f"work-{i}"
            work_dir.mkdir()
            threads.append(threading.Thread(target=infer, args=(prep, work_dir)))
            threads[-1].start()
        for thread in threads:
            thread.join()
    finally:
        for prep in preps:
            prep.slide.close()
    assert errors == []
    tiles = sum(prep.tiles_total for prep in preps)
    assert len(watch.held) == -(-preps[0].tiles_total // 4) + -(-preps[1].tiles_total // 4)
    assert tiles > 8  # both slides ran more than one batch
    assert all(watch.held)  # every forward pass under the model's lock
    assert watch.most_at_once == 1
