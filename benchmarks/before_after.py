"""A benchmark of two source trees, interleaved: before and after a change, on one machine.

    python benchmarks/before_after.py --base /work/wt-base --pairs 2 -- --size 10240 --rounds 2

Runs `benchmarks/<script>` (default runtime.py, with the arguments after `--` and
`--no-record`) in the `--base` tree and in this one, each with its own `.venv` and its own
runtime cache, in turn: base, new, base, new, ... A shared machine's speed drifts over
minutes; pairing each base run with the new run beside it keeps the comparison fair. Each
run's block (the script's own table) is printed under its tree and pair; nothing is written
to RESULTS.md (copy the blocks there with this command).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def run_tree(tree: Path, script: str, args: list[str], cache: Path) -> tuple[str, float]:
    """One run of `script` in `tree` (its own interpreter and cache): its output and wall s."""
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        sys.exit(f"error: {python} not found: make the tree's venv first (make -C {tree} test)")
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(cache)}
    command = [str(python), f"benchmarks/{script}", *args, "--no-record"]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"error: {' '.join(command)} in {tree} exited {done.returncode}:\n{done.stderr}")
    return done.stdout, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the tree before (with .venv)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--script", default="runtime.py")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the script's arguments")
    args = ap.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    trees = {"base": args.base.resolve(), "new": HERE}
    with tempfile.TemporaryDirectory(prefix="before-after-") as tmp:
        caches = {name: Path(tmp) / name for name in trees}
        for pair in range(1, args.pairs + 1):
            for name, tree in trees.items():
                out, wall = run_tree(tree, args.script, rest, caches[name])
                print(f"## pair {pair}, {name} ({tree}, {wall:.0f} s)\n\n{out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
