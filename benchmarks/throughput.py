"""Benchmarks of issue 8: does the pipeline run at the speed of the model, in flat memory?

    python benchmarks/throughput.py            # everything (what `make bench` runs)
    python benchmarks/throughput.py --quick    # items 1-4 on a small slide, < 3 minutes
    python benchmarks/throughput.py --only memory,scaling --model DIR

Sections (numbers as in the issue):

1. model     bare `model.predict` (classifier + DeepLabV3+ + gate) on the run's tiles, already
             in memory as uint8 tensors, same batch size / precision / tile size -> tiles/s.
             Measured before *and* after the pipeline run; the mean is the reference, so a
             machine whose load drifts during the run does not bias the ratio.
2. read      reading + decoding + resampling the same chunks exactly as the pipeline does
             (`wsi.region_reader.read_model_tiles`, tile by tile), one thread -> tiles/s.
3. pipeline  `wsi-segment SLIDE` as a subprocess, end to end (start-up, tissue detection,
             reading, inference, stitching, zarr, polygons, overlay, summary) -> tiles/s of
             wall clock; also its CPU seconds and peak RSS (os.wait4 rusage).
4. ratio     pipeline tiles/s / bare model tiles/s (goal >= 0.9), plus the same ratio in CPU
             seconds per tile (robust to other processes on a shared machine).
5. memory    peak RSS of `wsi-segment` on 10k, 40k and 100k px square slides (tiny model).
6. scaling   wall time for two slides of the same size with 10% and 60% tissue.
7. precision fp32 vs bf16 (+ channels_last) tiles/s, argmax agreement and max probability
             difference, on synthetic slide tiles and the real LUAD-HistoSeg sample patches.
   device    the GPU mode (benchmarks/device_section.py): model forward on the device, model
             with reduced outputs, decode limit with N decoder processes, the pipeline, GPU
             busy, and ratio = pipeline / min(decode limit, reduced model); `--device cpu`
             measures the same rows on the CPU as a proxy.
   engine    the engine's CPU read sources, the reader thread against one decoder process,
             inference stage alone, interleaved repetitions in one process
             (benchmarks/engine_section.py).
   overlap   what the default overlap buys: tiles, time and the redundant fraction for
             several overlaps, and the agreement of each label map with a wide-overlap
             reference (how much the tile border changes the answer).

Every run prints a table and appends it, with the command and the machine, to
benchmarks/RESULTS.md (`--no-record` to skip). The last line of stdout is `ratio=X.XX`
whenever section 4 ran.

This file is the command line; the work is in measure.py (child runs, machine, RESULTS.md),
stages.py (the pipeline's plan, read and bare model, measured alone) and sections.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=r"location=.*is out-of-bounds")  # tiffslide edge reads

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# benchmarks/ is not an installed package: its modules import through ROOT on sys.path.
from benchmarks.device_section import section_device  # noqa: E402
from benchmarks.engine_section import section_engine  # noqa: E402
from benchmarks.measure import loadavg, machine_info, record, render  # noqa: E402
from benchmarks.sections import (  # noqa: E402
    section_memory,
    section_overlap,
    section_precision,
    section_scaling,
    section_throughput,
)
from benchmarks.stages import default_model  # noqa: E402

SECTIONS = ("throughput", "memory", "scaling", "precision", "overlap", "device", "engine")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="items 1-4 on a small slide (< 3 min)")
    ap.add_argument("--only", default=None, help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: demo)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench"))
    ap.add_argument("--size", type=int, default=None, help="throughput slide side (px)")
    ap.add_argument("--tissue", type=float, default=0.6, help="throughput tissue fraction")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--chunk-tiles", type=int, default=4)
    ap.add_argument("--precision", choices=("auto", "fp32"), default="auto")
    ap.add_argument(
        "--runtime",
        choices=("auto", "torch", "openvino"),
        default="torch",
        help="items 1-4: the runtime of the bare model and the pipeline (auto: the plan's)",
    )
    ap.add_argument("--backend", choices=("auto", "openslide", "tiffslide"), default="auto")
    ap.add_argument("--model-tiles", type=int, default=96, help="bare-model sample size")
    ap.add_argument("--memory-sizes", default="10000,40000,100000")
    ap.add_argument("--memory-tissue", type=float, default=0.05)
    ap.add_argument("--scaling-size", type=int, default=10240)
    ap.add_argument("--precision-tiles", type=int, default=96)
    ap.add_argument("--overlaps", default="0,16,32,64", help="overlap section; max = reference")
    ap.add_argument("--fast", action="store_true", help="bank slides, not synthetic.slides")
    ap.add_argument("--device", default="auto", help="device section: auto, cpu or cuda")
    cores = len(os.sched_getaffinity(0))
    ap.add_argument(
        "--decoders",
        default=",".join(str(1 << k) for k in range(8) if (1 << k) <= cores),
        help="device section: decoder process counts for the decode limit",
    )
    ap.add_argument(
        "--read-devices",
        default="gpu,cpu",
        help="device section: --read-device values of extra pipeline runs at model pixels = "
        "level-0 pixels (empty: none)",
    )
    ap.add_argument("--reps", type=int, default=3, help="engine section: runs per runner")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    only = ["throughput"] if args.quick else [s for s in SECTIONS if s not in ("device", "engine")]
    if args.only:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = set(only) - set(SECTIONS)
        if bad:
            ap.error(f"unknown section(s) {sorted(bad)}; choose from {SECTIONS}")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    info = machine_info()
    info["load_start"] = loadavg()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model_dir, model_desc = (args.model, str(args.model)) if args.model else default_model(work)
    rows: list[tuple[str, str, str]] = []
    notes = [f"model: {model_desc}"]
    ratio = None
    if "throughput" in only:
        ratio = section_throughput(args, work, model_dir, rows, notes)
    if "precision" in only:
        section_precision(args, work, model_dir, rows, notes)
    if "scaling" in only:
        section_scaling(args, work, model_dir, rows, notes)
    if "memory" in only:
        section_memory(args, work, rows, notes)
    if "overlap" in only:
        section_overlap(args, work, model_dir, rows, notes)
    if "device" in only:
        ratio = section_device(args, work, model_dir, rows, notes)
    if "engine" in only:
        ratio = section_engine(args, work, model_dir, rows, notes)
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    block = render(rows, notes, info, command.strip(), started, time.perf_counter() - t0)
    print(block)
    if not args.no_record:
        record(block)
    if ratio is not None:
        print(f"ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
