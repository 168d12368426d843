"""Where the CPU goes in one `wsi-segment` run, thread by thread.

    python benchmarks/thread_cpu.py [--timeline CSV] SLIDE --model DIR --out OUT [options]

Runs `wsi-segment` in this process (the same `main` the command calls) while a sampler
thread reads each thread's CPU time from /proc every 0.25 s, then prints the CPU seconds
per thread name, digits folded ("Thread-7 (compute)" and "Thread-9 (compute)" add up as
"Thread-# (compute)"). On a CPU run the compute threads hold the model's forward passes,
`tile-prefetch` the slide reads and resampling, `zarr_io` zarr's event loop (where
tiffslide decodes JPEG tiles), `_finisher` and `polygons_#` the outputs: the rest of the
total is what the pipeline costs beyond the model. `--timeline CSV` also writes every
sample (seconds since start, thread name folded, CPU seconds so far), to see when the model's
threads wait: at the start, at the drain, behind the reads. Linux only (/proc/self/task).
"""

from __future__ import annotations

import atexit
import collections
import os
import re
import sys
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


class ThreadCpu:
    """CPU seconds of every thread this process has had, by name (the last reading of each)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self.samples: list[tuple[float, str, float]] = []
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        for entry in os.listdir("/proc/self/task"):
            tid = int(entry)
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except OSError:  # the thread ended between the listing and the read
                continue
            fields = stat.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            with self._lock:
                name = names.get(tid) or self.seen.get(tid, ("native",))[0]
                self.seen[tid] = (name, cpu)

    def record(self) -> None:
        """Keep the current totals by name, stamped with the time since start."""
        now = time.perf_counter() - self._t0
        self.samples.extend((now, name, seconds) for name, seconds in self.by_name().items())

    def by_name(self) -> dict[str, float]:
        by: dict[str, float] = collections.defaultdict(float)
        with self._lock:
            for name, cpu in self.seen.values():
                by[re.sub(r"\d+", "#", name)] += cpu
        return by


def main() -> None:
    args = sys.argv[1:]
    timeline = None
    if args[:1] == ["--timeline"]:
        timeline, args = Path(args[1]), args[2:]
    cpu = ThreadCpu()

    def loop() -> None:
        while True:
            cpu.sample()
            if timeline is not None:
                cpu.record()
            time.sleep(0.25)

    def report() -> None:
        cpu.sample()
        by = cpu.by_name()
        print(f"cpu by thread: {sum(by.values()):.1f} s in all", file=sys.stderr)
        for name, seconds in sorted(by.items(), key=lambda kv: -kv[1])[:20]:
            print(f"{seconds:8.1f} s  {name}", file=sys.stderr)
        if timeline is not None:
            rows = (f"{t:.2f},{name},{seconds:.2f}" for t, name, seconds in cpu.samples)
            timeline.write_text("t_s,thread,cpu_s\n" + "\n".join(rows) + "\n")

    threading.Thread(target=loop, daemon=True, name="thread-cpu-sampler").start()
    atexit.register(report)
    from wsi_segment.flows.cli import main as wsi_segment

    sys.argv = ["wsi-segment", *args]
    code = wsi_segment()
    report()
    atexit.unregister(report)
    sys.stderr.flush()
    os._exit(code)  # a run's lingering daemon threads (Prefect, zarr) must not delay the exit


if __name__ == "__main__":
    main()
