"""Seconds and memory to build OUT/cohort.csv and OUT/report.html for many slides.

    python benchmarks/morning_report.py                    # 1,000 slides, then 100 for memory
    python benchmarks/morning_report.py --slides 200 --work /tmp/mr

Segments the CMU test region once with the demo model (a real summary.json, overlay.png,
overlay-thumbnail.jpg and store attributes), then writes `--slides` synthetic output folders
from it: each its own slide name, path and creation time, class areas drawn at random
(fractions summing to 1), the real 1024 px overlay; one slide in 20 is a failure record
(written by `failure_record.write_record`) and one in 100 a damaged summary.json. Two kinds
of folder: as this version writes them (with the run's thumbnail: the first build a lab
sees from now on), and as an older version left them (no thumbnail, the summary not listing
one: the report makes each from overlay.png). Then, each in a fresh process, times
`wsi-segment report OUT`'s work (`build_morning_report`): cold (the folder's first build)
and warm (again: what a batch's rebuild after each slide costs), and reports the process's
peak RSS, for `--slides` and for a tenth of them: a flat memory gives the same peak for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.measure import ChildPeakRss, loadavg  # noqa: E402

CMU = REPO / "tests" / "data" / "CMU-1-Small-Region.svs"
THUMBNAIL = "overlay-thumbnail.jpg"
BUILD = (  # prints the build's wall and CPU seconds (its threads included), and its slides
    "import sys, time\n"
    "from wsi_segment.pipeline.morning_report import build_morning_report\n"
    "t0, c0 = time.perf_counter(), time.process_time()\n"
    "report = build_morning_report(sys.argv[1], {})\n"
    "print(time.perf_counter() - t0, time.process_time() - c0, len(report.entries))\n"
)


def seed_output(work: Path) -> Path:
    """One real output folder of the demo model (made once; made again over one an older
    version left, which has no thumbnail)."""
    out = work / "seed"
    if not (out / CMU.stem / THUMBNAIL).is_file():
        cli = [sys.executable, "-m", "wsi_segment.flows.cli"]
        cmd = [*cli, str(CMU), "--out", str(out), "--quiet", "--overwrite"]
        subprocess.run(cmd, check=True)
    return out / CMU.stem


def make_folders(seed: Path, out: Path, count: int, older: bool) -> None:
    """`count` synthetic output folders (and records) under `out` from the real one; `older`:
    as a version that wrote no thumbnail left them."""
    from wsi_segment.pipeline.outputs.failure_record import write_record

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    summary = json.loads((seed / "summary.json").read_text())
    attrs = (seed / "probabilities.ome.zarr" / "0" / ".zattrs").read_bytes()
    overlay = (seed / "overlay.png").read_bytes()
    thumbnail = (seed / THUMBNAIL).read_bytes()
    if older:
        summary["output"]["files"].remove(THUMBNAIL)
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
        if not older:
            (folder / THUMBNAIL).write_bytes(thumbnail)
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


@dataclass(frozen=True)
class Build:
    """One build in a fresh process: wall and CPU seconds of `build_morning_report`, the
    slides it showed, and the process's peak RSS (its own VmHWM)."""

    seconds: float
    cpu_seconds: float
    entries: int
    peak_mb: float

    def line(self, label: str) -> str:
        return (
            f"  {label}: {self.seconds:.2f} s ({self.cpu_seconds:.2f} CPU-s), "
            f"peak RSS {self.peak_mb:.0f} MB"
        )


def build(out: Path) -> Build:
    """Build OUT's report in a fresh process and measure it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    with ChildPeakRss(proc.pid) as peak:
        line = proc.stdout.read()
        _, status, _ = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode})")
    seconds, cpu, entries = line.split()
    return Build(float(seconds), float(cpu), int(entries), peak.mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-morning-report"))
    args = parser.parse_args()
    seed = seed_output(args.work)
    print(f"seed output: {seed} (overlay {(seed / 'overlay.png').stat().st_size:,} bytes)")
    print(f"load average before: {loadavg()}")
    for older in (False, True):
        kind = "older version's folders (no thumbnail)" if older else "this version's folders"
        for count in (args.slides, max(1, args.slides // 10)):
            out = args.work / f"out-{'older-' if older else ''}{count}"
            make_folders(seed, out, count, older)
            t0 = time.perf_counter()
            cold = build(out)
            warm = build(out)
            took = time.perf_counter() - t0
            page = (out / "report.html").stat().st_size
            table = (out / "cohort.csv").stat().st_size
            made = out / ".report"
            thumbs = sum(p.stat().st_size for p in made.iterdir()) if made.is_dir() else 0
            print(f"{kind}, {count} slides ({cold.entries} entries; both: {took:.1f} s)")
            print(cold.line("cold (first build)"))
            print(warm.line("warm (again)      "))
            print(f"  report.html {page:,} B, cohort.csv {table:,} B, made {thumbs:,} B")
            print(f"  load average after: {loadavg()}")


if __name__ == "__main__":
    main()
