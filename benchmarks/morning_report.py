"""Seconds and memory to build OUT/cohort.csv and OUT/report.html for many slides.

    python benchmarks/morning_report.py                    # 1,000 slides, then 100 for memory
    python benchmarks/morning_report.py --slides 200 --work /tmp/mr

Segments the CMU test region once with the demo model (a real summary.json, overlay.png and
store attributes), then writes `--slides` synthetic output folders from it: each its own
slide name, path and creation time, class areas drawn at random (fractions summing to 1),
the real 1024 px overlay; one slide in 20 is a failure record (written by
`failure_record.write_record`) and one in 100 a damaged summary.json. Then, each in a fresh
process, times `wsi-segment report OUT`'s work (`build_morning_report`): cold (every
thumbnail made) and warm (thumbnails there: what a batch's rebuild after each slide costs),
and reports the process's peak RSS, for `--slides` and for a tenth of them: a flat memory
gives the same peak for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CMU = REPO / "tests" / "data" / "CMU-1-Small-Region.svs"
BUILD = (
    "import sys, time\n"
    "from wsi_segment.pipeline.morning_report import build_morning_report\n"
    "t0 = time.perf_counter()\n"
    "report = build_morning_report(sys.argv[1], {})\n"
    "print(time.perf_counter() - t0, len(report.entries))\n"
)


def seed_output(work: Path) -> Path:
    """One real output folder of the demo model (made once)."""
    out = work / "seed"
    if not (out / CMU.stem / "summary.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "wsi_segment.flows.cli",
            str(CMU),
            "--out",
            str(out),
            "--quiet",
        ]
        subprocess.run(cmd, check=True)
    return out / CMU.stem


def make_folders(seed: Path, out: Path, count: int) -> None:
    """`count` synthetic output folders (and records) under `out` from the real one."""
    from wsi_segment.pipeline.outputs.failure_record import write_record

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    summary = json.loads((seed / "summary.json").read_text())
    attrs = (seed / "probabilities.ome.zarr" / "0" / ".zattrs").read_bytes()
    overlay = (seed / "overlay.png").read_bytes()
    rng = np.random.default_rng(0)
    names = list(summary["classes"])
    for i in range(count):
        name = f"slide-{i:04d}"
        if i % 20 == 7:
            record = {k: "x" for k in ("fingerprint", "since_utc", "failed_utc", "error_class")}
            record["message"] = f"/slides/{name}.svs: not a readable slide (benchmark)"
            assert write_record(out, name, record) is None
            continue
        folder = out / name
        (folder / "probabilities.ome.zarr" / "0").mkdir(parents=True)
        (folder / "probabilities.ome.zarr" / "0" / ".zattrs").write_bytes(attrs)
        (folder / "overlay.png").write_bytes(overlay)
        if i % 100 == 13:
            (folder / "summary.json").write_text('{"schema_version": 3, "slide": {"pa')
            continue
        tissue = float(rng.uniform(1e6, 2e8))
        shares = rng.dirichlet(np.ones(len(names)))
        summary["slide"]["name"], summary["slide"]["path"] = name, f"/slides/{name}.svs"
        summary["created_utc"] = f"2026-11-24T{i // 60 % 24:02d}:{i % 60:02d}:00+00:00"
        summary["tissue"]["area_um2"] = tissue
        for cls, share in zip(names, shares, strict=True):
            summary["classes"][cls]["area_um2"] = tissue * float(share)
            summary["classes"][cls]["fraction_of_tissue"] = float(share)
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))


def build(out: Path) -> tuple[float, int, float]:
    """Seconds of the build, slides shown, peak RSS (MB) of a fresh process that builds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode})")
    seconds, entries = line.split()
    return float(seconds), int(entries), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-morning-report"))
    args = parser.parse_args()
    seed = seed_output(args.work)
    print(f"seed output: {seed} (overlay {(seed / 'overlay.png').stat().st_size:,} bytes)")
    for count in (args.slides, max(1, args.slides // 10)):
        out = args.work / f"out-{count}"
        make_folders(seed, out, count)
        t0 = time.perf_counter()
        cold = build(out)
        warm = build(out)
        took = time.perf_counter() - t0
        page = (out / "report.html").stat().st_size
        table = (out / "cohort.csv").stat().st_size
        thumbs = sum(p.stat().st_size for p in (out / ".report").iterdir())
        print(f"{count} slides ({cold[1]} entries; both builds with start-up: {took:.1f} s)")
        print(f"  cold (thumbnails made): {cold[0]:.2f} s, peak RSS {cold[2]:.0f} MB")
        print(f"  warm (thumbnails kept): {warm[0]:.2f} s, peak RSS {warm[2]:.0f} MB")
        print(f"  report.html {page:,} B, cohort.csv {table:,} B, thumbnails {thumbs:,} B")


if __name__ == "__main__":
    main()
