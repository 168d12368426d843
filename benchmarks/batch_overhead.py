"""What `wsi-segment batch` costs over `wsi-segment` on one slide: interleaved pairs.

    python benchmarks/batch_overhead.py                       # CMU-1-Small-Region, 5 pairs
    python benchmarks/batch_overhead.py --rounds 8 SLIDE

Each round runs `wsi-segment SLIDE --overwrite --quiet`, then `wsi-segment batch SLIDE
--overwrite --quiet` (no Prefect API configured: the terminal's door, in-process), each a
fresh process on the embedded default model, after one uncounted warm-up run of each (the
runtime cache, the page cache). Prints each run's wall time, CPU time (the process and the
children it waited for) and peak RSS, then the medians and the batch's extra cost. The
issue's bound: at most 3 s and 3 CPU-s more than the single-slide command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from benchmarks.measure import ChildRun, run_child  # noqa: E402

CMU = HERE / "tests" / "data" / "CMU-1-Small-Region.svs"


def command(kind: str, slide: Path, out: Path) -> list[str]:
    cli = str(Path(sys.executable).with_name("wsi-segment"))
    head = [cli, "batch"] if kind == "batch" else [cli]
    return [*head, str(slide), "--out", str(out), "--overwrite", "--quiet"]


def run(kind: str, slide: Path, out: Path) -> ChildRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = run_child(command(kind, slide, out), env)
    if done.returncode:
        sys.exit(f"error: {kind} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", type=Path, default=CMU)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[ChildRun]] = {"segment": [], "batch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in runs:  # warm-up, not counted
            run(kind, args.slide, Path(tmp) / kind)
        for i in range(args.rounds):
            for kind in runs:
                done = run(kind, args.slide, Path(tmp) / kind)
                runs[kind].append(done)
                print(f"round {i + 1} {kind:8s} {done.wall_s:6.2f} s  {done.cpu_s:6.2f} CPU-s  "
                      f"{done.maxrss_mb:6.0f} MB", flush=True)  # fmt: skip
    med = {
        kind: (statistics.median(r.wall_s for r in rs), statistics.median(r.cpu_s for r in rs))
        for kind, rs in runs.items()
    }
    for kind, (wall, cpu) in med.items():
        print(f"median {kind:8s} {wall:6.2f} s  {cpu:6.2f} CPU-s")
    extra_wall = med["batch"][0] - med["segment"][0]
    extra_cpu = med["batch"][1] - med["segment"][1]
    pairs = [b.wall_s - s.wall_s for b, s in zip(runs["batch"], runs["segment"], strict=True)]
    print(f"batch - segment: {extra_wall:+.2f} s, {extra_cpu:+.2f} CPU-s (medians); "
          f"per pair {min(pairs):+.2f} .. {max(pairs):+.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
