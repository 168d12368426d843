"""A small slide's fixed costs, two source trees interleaved: where a warm start's time goes.

    python benchmarks/fixed_costs.py --base /tmp/before --new . --rounds 4
    python benchmarks/fixed_costs.py --steps     # a warm model load's steps, this tree

Runs each tree's `wsi-segment` (its own `.venv`) on the CMU slide (29 tiles) with the
defaults, alternating base and new in every round, each tree with its own runtime cache,
warmed by one run first that is not counted. Reports per run the process's wall clock and
CPU seconds (os.wait4: with `--batch`, its workers' too), its own peak RSS (VmHWM) and
summary.json's stage timings (`model_load_s`: the background load, imports included;
`tissue_and_plan_s`; `inference_s`), with the load average before each run: on a shared
machine the medians of interleaved runs compare, single runs do not. `--batch` runs the slide
through `wsi-segment batch --workers 2` instead: a Dask client planning for its bands on a
LocalCluster of two worker processes.

`--steps` times a warm load's steps one after the other in this process (wall and CPU
seconds each): the imports, the model folder's read, the runtime's opening (its
checks from the cache) and the first forward pass of one CPU batch, which loads the compiled
graph. CPU seconds are the steadier figure on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import ChildPeakRss, loadavg  # noqa: E402

SLIDE = ROOT / "tests/data/CMU-1-Small-Region.svs"
STAGES = ("model_load_s", "tissue_and_plan_s", "inference_s", "outputs_s")


def run_once(tree: Path, out: Path, cache: Path, batch: Path | None) -> dict[str, float]:
    """One CLI run of `tree` into a fresh `out` (`batch`: a folder holding the slide, run on a
    LocalCluster): wall, CPU, peak RSS and summary.json's timings."""
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(cache)}
    cmd = [str(tree / ".venv/bin/wsi-segment"), str(SLIDE), "--out", str(out), "--quiet"]
    if batch is not None:
        cmd[1:2] = ["batch", str(batch), "--workers", "2"]
    t0 = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, env)
    with ChildPeakRss(pid) as peak:
        _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tree}: wsi-segment failed ({status})")
    (summary,) = out.glob("*/summary.json")
    timings = json.loads(summary.read_text())["timings_s"]
    found = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak.mb}
    found.update({k: float(timings[k]) for k in STAGES if k in timings})
    return found


def load_steps() -> None:
    """Print each step of a warm model load as the CLI's plan asks for it (run after a CLI
    run has filled the cache)."""
    laps = [(time.perf_counter(), time.process_time())]

    def lap(name: str) -> None:
        laps.append((time.perf_counter(), time.process_time()))
        (w0, c0), (w1, c1) = laps[-2], laps[-1]
        print(f"{name:34} {w1 - w0:6.2f} s wall {c1 - c0:6.2f} s cpu", flush=True)

    from wsi_segment.pipeline.inference.slide_plan import slide_grid
    from wsi_segment.pipeline.inference.tile_reader import tile_geometry
    from wsi_segment.pipeline.machine import probe_machine
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.prepare import resolve_model_dir
    from wsi_segment.pipeline.prepare_inputs import read_model_folder
    from wsi_segment.pipeline.run_policy import RunFacts, decide, runtime_spec

    options = SegmentParams()
    plan = decide(probe_machine(), options, RunFacts())
    tile = read_model_folder(resolve_model_dir(options)).geometry[0]
    spec = runtime_spec(plan, tile_geometry(slide_grid(tile, options), options.gate))
    lap("import pipeline, decide the plan")
    import torch

    lap("import torch")
    from wsi_segment.models.model_files import ModelFiles
    from wsi_segment.models.runtimes.openvino_runtime import openvino_version
    from wsi_segment.models.runtimes.select import open_runtime

    openvino_version()
    lap("import our models, openvino")
    model = ModelFiles(resolve_model_dir(options), plan.device.value)
    lap("read the model folder (sha256)")
    opened = open_runtime(model, spec)
    lap(f"open_runtime ({opened.checks_computed} checks computed)")
    heavy = [m for m in ("timm", "torchvision", "segmentation_models_pytorch") if m in sys.modules]
    print(f"network built: {model.network_built}; imported: {heavy or 'none of'} "
          "timm, torchvision, smp", flush=True)  # fmt: skip
    tile = spec.geometry.tile
    executor = opened.executor(spec.geometry, plan.batch_size.value)  # the slide's graph
    tiles = torch.zeros((plan.batch_size.value, tile, tile, 3), dtype=torch.uint8)
    torch.set_num_threads(max(1, plan.cores.value // plan.compute_threads.value))
    executor.run(tiles)
    graphs = opened.graphs
    how = f"{graphs.builds} built, {graphs.cache_hits} cached" if graphs else "torch"
    lap(f"first batch ({how})")
    executor.run(tiles)
    lap("second batch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the reference tree")
    parser.add_argument("--steps", action="store_true", help="a warm load's steps, here")
    parser.add_argument("--new", type=Path, default=ROOT, help="the tree under test")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", action="store_true", help="wsi-segment batch --workers 2")
    args = parser.parse_args()
    if args.steps:
        load_steps()
        return 0
    if args.base is None:
        parser.error("--base is required (or --steps)")
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="fixed-costs-") as tmp:
        root = Path(tmp)
        batch = root / "slides" if args.batch else None
        if batch is not None:
            batch.mkdir()
            shutil.copyfile(SLIDE, batch / SLIDE.name)
        for round_ in range(args.rounds + 1):  # round 0 warms each tree's cache
            for label, tree in trees.items():
                load = loadavg()
                found = run_once(tree, root / f"{label}-{round_}", root / f"cache-{label}", batch)
                if round_:
                    runs[label].append(found)
                words = " ".join(f"{k}={v:.2f}" for k, v in found.items())
                print(f"round {round_} {label:4} load {load}: {words}", flush=True)
    for label, rounds in runs.items():
        medians = {k: statistics.median(r[k] for r in rounds if k in r) for k in rounds[0]}
        print(f"median {label:4} " + " ".join(f"{k}={v:.2f}" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
