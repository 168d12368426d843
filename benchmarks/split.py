"""Decoder processes against writer threads: `wsi-segment` end to end at each split.

    python benchmarks/split.py --device cuda --size 30720 --splits auto,15:1,8:4,8:8

On a GPU the cores go to two kinds of work: decoder processes that read and resample tiles,
and the writer's finisher threads that stitch, write and trace each chunk's polygons. The
run policy splits them (`read_policy.decoders_decision`, `writers_decision`); this measures
other splits beside it on the bank slide, each split in turn per round (rounds interleave,
so drift over minutes weighs on every split alike). `auto` is the run policy's own split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import BenchRun, run_pipeline  # noqa: E402
from benchmarks.stages import slide_and_model  # noqa: E402


def split_options(split: str) -> list[str]:
    """`auto` -> no options; `D:W` -> --decoders D --writers W."""
    if split == "auto":
        return []
    decoders, writers = split.split(":")
    return ["--decoders", str(int(decoders)), "--writers", str(int(writers))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12288, help="bank slide side (px)")
    ap.add_argument("--tissue", type=float, default=0.6)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: demo)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--splits", default="auto,15:1,8:4,8:8", help="auto or DECODERS:WRITERS")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    for split in splits:
        try:
            split_options(split)
        except ValueError:
            ap.error(f"--splits: {split!r} is neither auto nor DECODERS:WRITERS")
    bench = BenchRun.start("split.py", argv)
    slide, writer, model_dir, model_desc = slide_and_model(
        args.work, args.size, args.tissue, args.model
    )
    base = ["--device", args.device, "--batch-size", str(args.batch_size)]
    rows: list[tuple[str, str, str]] = []
    for round_ in range(1, args.rounds + 1):
        for split in splits:
            out = args.work / "out" / "split"
            run, summary = run_pipeline(slide, model_dir, out, [*base, *split_options(split)])
            policy, t = summary["run_policy"], summary["timings_s"]
            decoders, writers = policy["decoders"]["value"], policy["writers"]["value"]
            rows.append((
                f"round {round_}, {split}: {decoders} decoders, {writers} writers",
                f"{run.wall_s:.1f} s",
                f"inference {t['inference_s']:.2f} s, outputs {t['outputs_s']:.2f} s, "
                f"{summary['tiling']['tiles']} tiles; {run.gpu}",
            ))  # fmt: skip
    notes = [f"slide: {slide.name} ({writer}); model: {model_desc}", "figure: wall clock"]
    bench.finish(rows, notes, not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
