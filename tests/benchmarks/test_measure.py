"""benchmarks/measure.py: a child's peak RSS is its own, not the benchmark's.

Linux carries the pre-exec high-water mark into a child's rusage `ru_maxrss`, so a benchmark
that holds much memory (it has just written a 100k px slide) would report its own peak for
every `wsi-segment` it starts; the figure must be the child's VmHWM."""

from __future__ import annotations

import math
import sys

from benchmarks.measure import fixed_cost_allowed, run_child

CHILD = "x = bytearray(80 * 2**20); x[::4096] = b'1' * len(x[::4096]); import time; time.sleep(0.5)"


def test_child_peak_rss_is_the_childs_own_not_the_parents() -> None:
    held = bytearray(600 * 2**20)
    held[::4096] = b"1" * len(held[::4096])  # touched: 600 MB resident in this process
    run = run_child([sys.executable, "-c", CHILD])
    assert run.returncode == 0, run.stderr
    # the interpreter (~10-30 MB) and its 80 MB buffer; rusage would give >= 600 MB here
    assert 80 < run.maxrss_mb < 300, run.maxrss_mb
    del held


def test_a_child_that_fails_at_once_still_reports() -> None:
    run = run_child([sys.executable, "-c", "raise SystemExit(3)"])
    assert run.returncode == 3 and run.maxrss_mb < 300


def test_the_fixed_cost_allowed_is_the_one_at_which_the_ratio_meets_the_goal() -> None:
    """ratio = model_s / (F + inference_s): at the allowed F it is exactly the goal; a stage
    no faster than the goal leaves no fixed cost at all."""
    model_s, inference_s, goal = 9.6, 10.4, 0.85
    allowed = fixed_cost_allowed(model_s, inference_s, goal)
    assert allowed is not None
    assert math.isclose(model_s / (allowed + inference_s), goal)
    assert math.isclose(allowed, 9.6 / 0.85 - 10.4)
    assert fixed_cost_allowed(model_s, model_s / goal, goal) is None  # stage exactly at goal
    assert fixed_cost_allowed(model_s, 12.0, goal) is None  # stage slower than the goal
