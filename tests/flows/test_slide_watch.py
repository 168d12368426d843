"""SlideWatch with real threads: a slide past its deadline and an interrupted batch cancel
the slide's token, which the slide's own code checks; a real slide run (the CMU slide, the
tiny model, the engine in this process, with the reader thread or a decoder process)
stopped mid-inference ends within a bounded time with the stop's reason, and leaves no
partial folder, lock, decoder process, shared memory or engine thread behind. The package's
code stops nothing by CPython's private means."""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE
from tests.engine_leaks import shm_entries
from wsi_segment.errors import (
    SlideInterrupted,
    SlideNotStarted,
    SlideStopped,
    SlideTimedOut,
)
from wsi_segment.flows.slide_watch import SlideWatch
from wsi_segment.pipeline import segment
from wsi_segment.pipeline.cancellation import POLL_S, CancelToken
from wsi_segment.pipeline.params import SegmentParams

ROOT = Path(__file__).resolve().parents[2]
STOP_LATENCY_S = 2.0  # a checked wait sees its token within POLL_S; the rest is cleanup


def checking_slide(watch: SlideWatch, index: int, seconds: float, caught: dict) -> None:
    """A slide that waits in short steps and checks its token, as the pipeline's waits do."""
    t0 = time.monotonic()
    try:
        with watch.running(index) as cancel:
            while time.monotonic() - t0 < seconds:
                cancel.check()
                cancel.wait(0.05)
        caught[index] = None
    except SlideStopped as exc:
        caught[index] = (type(exc), time.monotonic() - t0)


def test_a_slide_past_its_deadline_is_stopped_and_one_within_it_is_not() -> None:
    caught: dict = {}
    with SlideWatch(0.5) as watch:
        threads = [
            threading.Thread(target=checking_slide, args=(watch, 0, 30.0, caught)),
            threading.Thread(target=checking_slide, args=(watch, 1, 0.1, caught)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    assert caught[1] is None
    kind, took = caught[0]
    assert kind is SlideTimedOut
    assert 0.5 <= took < 0.5 + 4 * POLL_S  # the watcher looks every POLL_S, the slide too
    assert watch.started() == set()


def test_an_interrupt_stops_the_running_slides_and_no_other_starts() -> None:
    caught: dict = {}
    with SlideWatch(None) as watch:
        t = threading.Thread(target=checking_slide, args=(watch, 0, 30.0, caught))
        t.start()
        while watch.started() != {0}:
            time.sleep(0.01)
        watch.interrupt_all()
        t.join(timeout=10)
        assert caught[0][0] is SlideInterrupted and caught[0][1] < 1.0
        with pytest.raises(SlideNotStarted), watch.running(1):
            pass


def test_the_first_stop_stays_and_a_finished_slide_is_not_stopped() -> None:
    """A slide past its deadline that is then interrupted stays timed out; one that
    returns without checking again after its stop has finished (its result stands)."""
    with SlideWatch(0.1) as watch:
        with watch.running(0) as cancel:
            deadline = time.monotonic() + 5
            while not cancel.cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
            watch.interrupt_all()
            assert cancel.reason is SlideTimedOut
        assert watch.started() == set()


class StopAtFirstTiles:
    """A real progress listener (the engine's `Progress`): once the first tiles are
    written, the batch is interrupted, from another thread as Ctrl-C's handler would."""

    def __init__(self, watch: SlideWatch) -> None:
        self.watch = watch
        self.tiles = 0
        self.total = 0
        self.stopped_at = 0.0

    def note(self, text: str) -> None:
        pass

    def start(self, total: int, unit: str = "tile", desc: str = "") -> None:
        self.total = total

    def advance(self, n: int) -> None:
        self.tiles += n
        if not self.stopped_at:
            self.stopped_at = time.monotonic()
            threading.Thread(target=self.watch.interrupt_all).start()

    def close(self) -> None:
        pass


def engine_threads() -> list[threading.Thread]:
    """Threads of an engine run: its parts, writers and decoder supervisors (unnamed
    daemon threads) and the prefetcher."""
    return [
        t
        for t in threading.enumerate()
        if t.name == "tile-prefetch" or re.fullmatch(r"Thread-\d+ \(.*\)", t.name)
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("decoders", [0, 1], ids=["reader-thread", "decoder-process"])
def test_a_real_slide_stopped_mid_inference_ends_in_bounded_time_and_cleans_up(
    tmp_path: Path, tiny_model_dir: Path, decoders: int
) -> None:
    """The slide runs in its own thread as a batch's does, its stages handed the token of
    `SlideWatch.running`; the interrupt lands after the first tiles are written, with
    most of the slide still to run (one tile per forward pass on one compute thread)."""
    out = tmp_path / "out"
    params = SegmentParams(
        model_dir=tiny_model_dir,
        device="cpu",
        precision="fp32",
        runtime="torch",
        batch_size=1,
        threads=1,
        decoders=decoders,
        mpp=0.5,
    )
    shm_before = shm_entries()
    caught: dict = {}
    with SlideWatch(None) as watch:
        progress = StopAtFirstTiles(watch)

        def slide() -> None:
            try:
                with watch.running(0) as cancel:
                    caught["result"] = run_slide(out, params, progress, cancel)
            except SlideStopped as exc:
                caught["stop"] = exc
            caught["ended"] = time.monotonic()

        thread = threading.Thread(target=slide, name="slide-0")
        thread.start()
        thread.join(timeout=240)
        assert not thread.is_alive()
    assert "result" not in caught, "the slide finished before the stop: slow it down"
    assert isinstance(caught["stop"], SlideInterrupted)
    assert 0 < progress.tiles < progress.total
    assert caught["ended"] - progress.stopped_at < STOP_LATENCY_S
    assert list(out.glob("*")) == []  # no partial folder, no lock
    assert multiprocessing.active_children() == []
    assert shm_entries() <= shm_before
    assert engine_threads() == []


def run_slide(out: Path, params: SegmentParams, progress, cancel: CancelToken):
    """The CMU slide's stages in this process, as a batch's slide task runs them."""
    stages = segment.Stages(
        prepare=lambda path, root, p: segment.prepare_stage(path, root, p, cancel=cancel),
        infer=lambda prep, work_dir: segment.infer(
            prep, work_dir, progress=progress, cancel=cancel
        ),
        finish=lambda prep, outcomes, out_dir: segment.finish(prep, outcomes, out_dir, cancel),
    )
    return segment.run_stages(CMU_SLIDE, out, params, stages, cancel)


PRIVATE_STOPS = ("SetAsyncExc", "_limbo", "_active_limbo_lock", "pythonapi")


def test_the_package_stops_nothing_by_cpython_internals() -> None:
    """No async exception into a thread (`PyThreadState_SetAsyncExc`), no private
    `threading` names (`threading._limbo`, `_active_limbo_lock`, `_shutdown`, ...), no
    ctypes reach into the interpreter: stopping is the cancellation token's alone."""
    private_threading = re.compile(r"\bthreading\._[a-z]\w*")
    found = []
    for folder in ("wsi", "models", "pipeline", "flows", "wsi_segment"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            found += [f"{path.name}: {word}" for word in PRIVATE_STOPS if word in text]
            found += [f"{path.name}: {m}" for m in private_threading.findall(text)]
    assert found == []
