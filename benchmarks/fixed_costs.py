"""A small slide's fixed costs, two source trees interleaved: where a warm start's time goes.

    python benchmarks/fixed_costs.py --base /tmp/before --new . --rounds 4

Runs each tree's `wsi-segment` (its own `.venv`) on the CMU slide (29 tiles) with the
defaults, alternating base and new in every round, each tree with its own runtime cache,
warmed by one run first that is not counted. Reports per run the process's wall clock and
CPU seconds (os.wait4) and summary.json's stage timings (`model_load_s`: the background
load, imports included; `tissue_and_plan_s`; `inference_s`), with the load average before
each run: on a shared machine the medians of interleaved runs compare, single runs do not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import loadavg  # noqa: E402

SLIDE = ROOT / "tests/data/CMU-1-Small-Region.svs"
STAGES = ("model_load_s", "tissue_and_plan_s", "inference_s", "outputs_s")


def run_once(tree: Path, out: Path, cache: Path) -> dict[str, float]:
    """One CLI run of `tree` into a fresh `out`: wall, CPU and summary.json's timings."""
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(cache)}
    cmd = [str(tree / ".venv/bin/wsi-segment"), str(SLIDE), "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tree}: wsi-segment failed ({status})")
    (summary,) = out.glob("*/summary.json")
    timings = json.loads(summary.read_text())["timings_s"]
    found = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}
    found.update({k: float(timings[k]) for k in STAGES if k in timings})
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the reference tree")
    parser.add_argument("--new", type=Path, default=ROOT, help="the tree under test")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="fixed-costs-") as tmp:
        root = Path(tmp)
        for round_ in range(args.rounds + 1):  # round 0 warms each tree's cache
            for label, tree in trees.items():
                load = loadavg()
                found = run_once(tree, root / f"{label}-{round_}", root / f"cache-{label}")
                if round_:
                    runs[label].append(found)
                words = " ".join(f"{k}={v:.2f}" for k, v in found.items())
                print(f"round {round_} {label:4} load {load}: {words}", flush=True)
    for label, found in runs.items():
        medians = {k: statistics.median(r[k] for r in found if k in r) for k in found[0]}
        print(f"median {label:4} " + " ".join(f"{k}={v:.2f}" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
