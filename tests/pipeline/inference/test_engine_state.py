"""The engine's cleanup joins every part it started, even when an interrupt (SIGTERM, a
batch's stop) cut a thread's start short: `join` would refuse a thread Python has not
flagged started ("cannot join thread before it is started", seen once under load)."""

from __future__ import annotations

import threading
import time

from wsi_segment.pipeline.inference.engine_state import (
    START_FLAG_WAIT_S,
    join_part,
    start_parts,
)


def test_a_part_whose_start_never_happened_is_skipped_not_an_error() -> None:
    never = threading.Thread(target=lambda: None)
    t0 = time.monotonic()
    join_part(never)  # threading's own join raises RuntimeError here
    assert time.monotonic() - t0 <= START_FLAG_WAIT_S + 1.0


def test_started_parts_are_kept_and_joined_until_they_end() -> None:
    release = threading.Event()
    ended: list[int] = []

    def part(i: int) -> None:
        release.wait(timeout=30)
        ended.append(i)

    threads: list[threading.Thread] = []
    start_parts([(part, (0,)), (part, (1,))], threads)
    assert len(threads) == 2 and all(t.is_alive() for t in threads)
    release.set()
    for thread in threads:
        join_part(thread)
    assert sorted(ended) == [0, 1] and not any(t.is_alive() for t in threads)
