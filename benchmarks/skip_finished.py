"""Seconds per finished slide that a rerun skips: the nightly batch over a finished folder.

    python benchmarks/skip_finished.py                     # 200 slides, CLI + batch reruns
    python benchmarks/skip_finished.py --slides 50 --no-batch

Writes a few small synthetic slides and copies them to `--slides` files (each copy is its
own slide to the fingerprint: another path), segments them all once with the CLI, then
times reruns that find every slide up to date:

- in one process, `segment_slide` per slide (the decision alone, no start-up), and for
  comparison the path that decided only after `prepare` (open, model load, tissue, plan);
- the `wsi-segment` CLI over all slides and over one, in fresh processes, so the difference
  is the cost per skipped slide with start-up taken out;
- `wsi-segment batch` (Prefect's temporary server included) over all slides and over a
  tenth of them, likewise.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

DISTINCT = 4  # slides rendered; the rest are copies


def make_slides(folder: Path, count: int, size: int) -> list[Path]:
    from wsi_segment.synthetic.slides import write_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for seed in range(DISTINCT):
        src = folder / f"source-{seed}.tif"
        if not src.exists():
            write_synthetic_slide(src, size, size, mpp=0.5, seed=seed, tissue_fraction=0.6)
        sources.append(src)
    slides = []
    for i in range(count):
        path = folder / "slides" / f"slide-{i:04d}.svs"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            shutil.copy2(sources[i % DISTINCT], path)
        slides.append(path)
    return slides


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({run.returncode}):\n{run.stderr}")
    return seconds, run.stdout


def cli() -> list[str]:
    return [sys.executable, "-m", "wsi_segment"]


def in_process(slides: list[Path], out: Path, old_path: bool) -> list[float]:
    """Seconds per slide of an up-to-date rerun in this process."""
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import prepare, segment_slide
    from wsi_segment.pipeline.up_to_date import is_up_to_date

    params = SegmentParams(device="cpu", precision="fp32")
    seconds = []
    for slide in slides:
        t0 = time.perf_counter()
        if old_path:  # what run_stages did before deciding first: prepare, then compare
            prep = prepare(str(slide), out, params)
            try:
                assert is_up_to_date(prep)
            finally:
                prep.close_prefetch()
                prep.slide.close()
        else:
            assert segment_slide(slide, out, params).status == "up-to-date"
        seconds.append(time.perf_counter() - t0)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--size", type=int, default=768, help="slide side, level-0 px")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench/skip"))
    parser.add_argument("--old", type=int, default=20, help="slides timed on the old path")
    parser.add_argument("--no-batch", action="store_true", help="skip the Prefect batch")
    args = parser.parse_args()
    slides = make_slides(args.work, args.slides, args.size)
    out = args.work / "out"
    common = ["--out", str(out), "--device", "cpu", "--precision", "fp32", "--quiet"]
    first, _ = timed([*cli(), *map(str, slides), *common])
    print(f"first run (or rerun if already done): {first:.1f} s for {len(slides)} slides")

    new = in_process(slides, out, old_path=False)
    print(
        f"in process, decided first: mean {statistics.mean(new) * 1e3:.1f} ms, "
        f"median {statistics.median(new) * 1e3:.1f} ms, max {max(new) * 1e3:.1f} ms per slide"
    )
    if args.old:
        old = in_process(slides[: args.old], out, old_path=True)
        rest = old[1:] or old
        print(
            f"in process, decided after prepare: first slide {old[0]:.2f} s (imports, model "
            f"load), then mean {statistics.mean(rest) * 1e3:.0f} ms per slide"
        )

    t_all, stdout = timed([*cli(), *map(str, slides), *common])
    assert stdout.count("up to date") == len(slides), stdout[-500:]
    t_one, _ = timed([*cli(), str(slides[0]), *common])
    per = (t_all - t_one) / max(1, len(slides) - 1)
    print(
        f"CLI rerun: {t_all:.2f} s for {len(slides)} slides, {t_one:.2f} s for 1: "
        f"{per * 1e3:.1f} ms per skipped slide"
    )
    if not args.no_batch:
        batch = [*cli(), "batch", "--workers", "0", *common]
        t_batch, stdout = timed([*batch[:4], str(slides[0].parent), *batch[4:]])
        assert stdout.count("| up-to-date |") == len(slides), stdout[-500:]
        tenth = max(1, len(slides) // 10)
        manifest = args.work / "tenth.csv"
        manifest.write_text("slide\n" + "".join(f"{s}\n" for s in slides[:tenth]))
        t_tenth, _ = timed([*batch[:4], str(manifest), *batch[4:]])
        per = (t_batch - t_tenth) / max(1, len(slides) - tenth)
        print(
            f"batch rerun: {t_batch:.1f} s for {len(slides)} slides, {t_tenth:.1f} s for "
            f"{tenth}: {per * 1e3:.0f} ms per skipped slide"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
