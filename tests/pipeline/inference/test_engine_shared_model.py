"""Slides in flight in one process (a batch) share one loaded model and take turns on it:
every slide's handle holds the process's model *and its lock*, and the engine's compute
stage runs each forward pass under that lock, so two compute stages never run the model at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR, WrappedLoaded
from wsi_segment.pipeline import segment
from wsi_segment.pipeline.inference.engine import EngineSizes, build_executor
from wsi_segment.pipeline.inference.model_handle import ModelHandle, load_for_process
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import PreparedSlide

OS1_SLIDE = DATA_DIR / "OS-1-detail.ome.tif"


class TurnWatch:
    """The real model's executors; records, per forward pass, whether the model's lock was
    held and how many forward passes ran at that moment (its own included). `hold_s`: each
    pass holds on that long, so passes that can overlap do."""

    def __init__(self, lock: threading.Lock, hold_s: float = 0.0) -> None:
        self.lock = lock
        self.hold_s = hold_s
        self.held: list[bool] = []
        self.running = 0
        self.most_at_once = 0
        self._count = threading.Lock()

    def wrap(self, executor):
        watch = self

        class Watched:
            def run(self, tiles):
                with watch._count:
                    watch.held.append(watch.lock.locked())
                    watch.running += 1
                    watch.most_at_once = max(watch.most_at_once, watch.running)
                try:
                    time.sleep(watch.hold_s)
                    return executor.run(tiles)
                finally:
                    with watch._count:
                        watch.running -= 1

        return Watched()


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
        h = preps[0].model  # the recipe the plan gave (device, runtime spec)
        assert (h.model_dir, h.device, h.spec.precision) == (str(params.model_dir), "cpu", "fp32")
        loaded = load_for_process(h.model_dir, h.device, h.spec)
        for prep in preps:
            assert prep.model.get().model is loaded.model
            assert prep.model.get().lock is loaded.lock  # one lock per loaded model
    finally:
        for prep in preps:
            prep.slide.close()


def test_two_slides_compute_stages_take_turns_on_the_model(tmp_path, params) -> None:
    preps = prepared([CMU_SLIDE, OS1_SLIDE], tmp_path, params)
    shared = preps[0].model.get()
    watch = TurnWatch(shared.lock)
    watched = WrappedLoaded(shared.model, shared.runtime, shared.lock, wrap=watch.wrap)
    errors: list[BaseException] = []

    def infer(prep: PreparedSlide, work_dir: Path) -> None:
        try:
            segment.infer(prep, work_dir)
        except BaseException as exc:
            errors.append(exc)

    threads = []
    try:
        for i, prep in enumerate(preps):
            prep.model = ModelHandle.of(watched, str(params.model_dir), "cpu", prep.model.spec)
            # the executor `prepare` built, built again from the watched model
            assert prep.executor is not None and prep.policy is not None
            sizes = EngineSizes.of(prep.policy)
            prep.executor = build_executor(prep.model, prep.executor.geometry, sizes)
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
