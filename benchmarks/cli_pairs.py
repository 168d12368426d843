"""`wsi-segment SLIDE` of two source trees, interleaved, optionally under a CPU quota.

    python benchmarks/cli_pairs.py --base /work/wt-base --rounds 4 SLIDE
    python benchmarks/cli_pairs.py --base /work/wt-base --rounds 3 --quota-cores 1 SLIDE
    python benchmarks/cli_pairs.py --base /work/wt-base --rounds 5 --cold SLIDE

Each round runs the base tree's CLI, then this tree's (each its own `.venv` and runtime
cache, warmed by a first run of each that is not counted), on the defaults, and prints the
wall time, CPU time and peak RSS of the process, the plan's cores and compute threads, and
summary.json's stage timings: a quick check of "not slower" where runtime.py's one end-to-end
round per tree is too noisy. `--cold`: every run with an empty runtime cache, as a model's
first run on a machine (its export, compile and checks), and no warming round.
`--quota-cores N` runs every CLI inside a cgroup v1 group whose CPU quota is N cores (as
`docker run --cpus N`; needs root and a writable /sys/fs/cgroup/cpu), removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from benchmarks.measure import run_child  # noqa: E402

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000
STAGES = ("tissue_and_plan_s", "model_load_s", "inference_s", "outputs_s")


def one_run(tree: Path, slide: Path, out: Path, cache: Path, group: Path | None) -> dict:
    """The CLI of `tree` on `slide` (in `group` when given): wall s, CPU s, peak RSS MB, plan
    and timings."""
    cli = tree / ".venv" / "bin" / "wsi-segment"
    if not cli.exists():
        sys.exit(f"error: {cli} not found: make the tree's venv first (make -C {tree} test)")
    command = [str(cli), str(slide), "--out", str(out), "--quiet", "--overwrite"]
    if group is not None:  # the shell joins the group, then becomes the CLI
        command = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *command]
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(cache)}
    run = run_child(command, env)
    if run.returncode:
        sys.exit(f"error: {command} exited {run.returncode}:\n{run.stderr[-2000:]}")
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    policy = summary["run_policy"]
    return {
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "peak_rss_mb": run.maxrss_mb,
        "cores": policy["cores"]["value"],
        "computes": policy["compute_threads"]["value"],
        **{k: summary["timings_s"].get(k, 0.0) for k in STAGES},
    }


def quota_group(cores: float) -> Path:
    """A new cgroup v1 group whose CPU quota is `cores` cores."""
    group = CPU_CGROUP / f"wsi-segment-bench-{os.getpid()}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(round(cores * PERIOD_US)))
    return group


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--base", type=Path, required=True, help="the tree before (with .venv)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quota-cores", type=float, default=None)
    ap.add_argument("--cold", action="store_true", help="an empty runtime cache every run")
    args = ap.parse_args(argv)
    trees = {"base": args.base.resolve(), "new": HERE}
    group = quota_group(args.quota_cores) if args.quota_cores else None
    rows: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        with tempfile.TemporaryDirectory(prefix="cli-pairs-") as tmp:
            first = 1 if args.cold else 0  # round 0 warms each tree's cache
            for round_ in range(first, args.rounds + 1):
                for name, tree in trees.items():
                    out = Path(tmp) / name / "out"
                    cache = Path(tmp) / name / (f"cache-{round_}" if args.cold else "cache")
                    row = one_run(tree, args.slide.resolve(), out, cache, group)
                    if round_:
                        rows[name].append(row)
                        print(name, " ".join(f"{k} {v:.2f}" if isinstance(v, float)
                                             else f"{k} {v}" for k, v in row.items()), flush=True)  # fmt: skip
    finally:
        if group is not None:
            group.rmdir()
    for name, runs in rows.items():
        keys = ("wall_s", "cpu_s", "peak_rss_mb", *STAGES)
        medians = {k: statistics.median(r[k] for r in runs) for k in keys}
        print(f"median {name}: " + " ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
