"""wait_for_slides with a real Prefect future over a real thread, and real SIGTERMs sent to a
thread other than the main one (the kernel may deliver a process's signal to any of its
threads; Python still runs the handler in the main thread, which must not be stuck in a wait
without a limit).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect.futures import PrefectConcurrentFuture

from wsi_segment.errors import SlideStopped
from wsi_segment.flows.batch_interrupt import (
    INTERRUPTED,
    BatchInterrupted,
    stopped_result,
    wait_for_slides,
)
from wsi_segment.flows.cli import sigterm_as_interrupt
from wsi_segment.flows.slide_watch import SlideWatch
from wsi_segment.pipeline.batch_inputs import BatchItem
from wsi_segment.pipeline.segment import SlideResult

BACKSTOP_S = 60.0  # the slide ends by itself after this: an interrupt that waits for it failed


def polling_slide(watch: SlideWatch, item: BatchItem, idents: list[int]) -> SlideResult:
    """A slide whose waits check its token, as the pipeline's do, until stopped or the
    backstop."""
    idents.append(threading.get_ident())
    t0 = time.monotonic()
    try:
        with watch.running(0) as cancel:
            while time.monotonic() - t0 < BACKSTOP_S:
                cancel.check()
                cancel.wait(0.01)
            return SlideResult(str(item.slide), "done", None, {}, None, time.monotonic() - t0)
    except SlideStopped as exc:
        return stopped_result(item, exc, None, time.monotonic() - t0)


@pytest.mark.timeout(2 * BACKSTOP_S)
def test_a_sigterm_delivered_to_a_slide_thread_interrupts_the_batch(tmp_path: Path) -> None:
    """SIGTERM lands in the slide's thread while the main thread waits for that slide: the
    batch is interrupted and the slide stopped (not finished first, as an unbounded wait of
    the main thread would have it)."""
    item = BatchItem(tmp_path / "a.svs", None, "a")
    idents: list[int] = []
    with ThreadPoolExecutor(1) as pool, SlideWatch(None) as watch:
        future = PrefectConcurrentFuture(
            uuid.uuid4(), pool.submit(polling_slide, watch, item, idents)
        )
        while watch.started() != {0}:
            time.sleep(0.01)
        with sigterm_as_interrupt(), pytest.raises(BatchInterrupted) as info:
            threading.Timer(0.3, signal.pthread_kill, (idents[0], signal.SIGTERM)).start()
            wait_for_slides({0: future}, [item], watch, {})
    (result,) = info.value.results
    assert result.status == INTERRUPTED, result
