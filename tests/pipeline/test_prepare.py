"""A prepared slide's background work and the batch's stop: a stop raised in the slide's
thread (`flows.slide_watch`) while it waits for that work is not swallowed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.conftest import CMU_SLIDE
from wsi_segment.flows.slide_watch import SlideInterrupted, SlideWatch
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import prepare
from wsi_segment.pipeline.startup import Background


def poll_until(event: threading.Event) -> None:
    """Background work that ends when told (a slow overlay thumbnail read)."""
    while not event.is_set():
        time.sleep(0.01)


def test_a_stop_while_waiting_for_the_overlay_thumbnail_stops_the_slide(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    params = SegmentParams(model_dir=tiny_model_dir, device="cpu", precision="fp32")
    prep = prepare(CMU_SLIDE, tmp_path / "out", params)
    prep.close_prefetch()
    done, seen = threading.Event(), {}
    prep.overlay_thumb = Background(poll_until, done)

    def slide() -> None:
        with watch.running(0):
            try:
                prep.close_prefetch()
                seen["outcome"] = "returned"
            except SlideInterrupted:
                seen["outcome"] = "stopped"

    try:
        with SlideWatch(None) as watch:
            thread = threading.Thread(target=slide)
            thread.start()
            while watch.started() != {0}:
                time.sleep(0.01)
            time.sleep(0.1)  # in close_prefetch, joining the thumbnail's thread
            watch.interrupt_all()
            time.sleep(0.2)
            done.set()
            thread.join(timeout=10)
        assert seen == {"outcome": "stopped"}
    finally:
        done.set()
        prep.slide.close()
