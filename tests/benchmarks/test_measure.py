"""benchmarks/measure.py: a child's peak RSS is its own, not the benchmark's.

Linux carries the pre-exec high-water mark into a child's rusage `ru_maxrss`, so a benchmark
that holds much memory (it has just written a 100k px slide) would report its own peak for
every `wsi-segment` it starts; the figure must be the child's VmHWM."""

from __future__ import annotations

import sys

from benchmarks.measure import run_child

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
