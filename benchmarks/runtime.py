"""Runtimes on the CPU (issue 33): torch fp32 channels_last against OpenVINO fp32 and bf16.

    python benchmarks/runtime.py                   # model alone + end to end, 20480 px slide
    python benchmarks/runtime.py --size 8192 --rounds 2 --no-record

In one run, interleaved round by round (a shared machine's load drifts; each round measures
every variant once, in turn):

1. model alone  an executor's `run` (the slide path's whole graph: preprocess, classifier,
                gate, segmenter, reduction) on tiles of the synthetic slide, batch 16, each
                variant as the engine runs it: `--threads` compute threads of cores //
                threads torch threads (OpenVINO: a stream each, of that share), and one of
                all cores; the faster of the two is the variant's figure -> tiles/s.
2. agreement    labels and per-class areas of each variant against torch fp32 on real tiles
                (the 18 LUAD-HistoSeg sample patches and the 6 CMU-1 calibration tiles, whole
                tiles as `evaluate` scores them); and precision auto's verdict for the model.
3. end to end   `wsi-segment SLIDE` with `--runtime torch --precision fp32`, the defaults
                (`--runtime auto --precision auto`) and `--runtime openvino --precision bf16`
                (CPUs with bf16 hardware) -> tiles/s of wall clock and of the inference
                stage, peak RSS, and the ratio of the inference stage to the same variant's
                bare model, measured right before and right after each end-to-end run on
                `--bare-tiles` tiles (its faster layout of the two): a shared machine's speed
                drifts by more than the gap being measured between minutes apart.

The compiled graphs are built (and cached) before any clock starts. The table, with the
command, the machine and the load, is appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from wsi_segment.models.runtimes.tile_io import Executor

warnings.filterwarnings("ignore", message=r"location=.*is out-of-bounds")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import BenchRun, loadavg, log, run_pipeline, slide_args  # noqa: E402
from benchmarks.slides import make_slide  # noqa: E402
from benchmarks.stages import plan_like_pipeline, read_chunks  # noqa: E402

# what an AVX2-only proxy run sets: oneDNN (torch's and OpenVINO's), ATen, OpenVINO's own kernels
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OV_CPU_MAX_ISA")


def real_tiles(tile: int) -> np.ndarray:
    """LUAD-HistoSeg sample patches (18) + CMU-1 calibration tiles (6), uint8 (N, 3, T, T)."""
    import numpy as np
    from PIL import Image

    from wsi_segment.models.precision_calibration import calibration_tiles

    luad = ROOT / "tests" / "data" / "luad-histoseg-sample"
    paths = sorted(luad.glob("train/*.png")) + sorted(luad.glob("*/img/*.png"))
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((tile, tile))) for p in paths]
    x = np.stack(arrays).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(np.concatenate([x, calibration_tiles(tile)]))


def bare_reduced(executor: Executor, tiles: np.ndarray, batch: int, streams: int) -> float:
    """Wall s of an executor's `run` (the engine's call, at its geometry) over `tiles` in
    batches, `streams` threads each with cores // streams torch threads, after a warm-up."""
    import threading

    import numpy as np
    import torch

    batches = [
        torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch]))
        for i in range(0, len(tiles), batch)
    ]
    cores = len(os.sched_getaffinity(0))
    per = max(1, cores // streams)
    before = torch.get_num_threads()

    def work(mine: list[torch.Tensor]) -> None:
        torch.set_num_threads(per)
        try:
            with torch.inference_mode():
                executor.run(mine[0])
                ready.wait()
                for b in mine:
                    executor.run(b)
        except BaseException:
            ready.abort()  # the main thread's wait fails rather than waiting for ever
            raise

    shares = [batches[k::streams] for k in range(streams) if batches[k::streams]]
    ready = threading.Barrier(len(shares) + 1)
    threads = [threading.Thread(target=work, args=(mine,)) for mine in shares]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    torch.set_num_threads(before)
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    slide_args(ap, 20480)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds, model alone")
    ap.add_argument("--e2e-rounds", type=int, default=1, help="interleaved rounds, end to end")
    ap.add_argument("--model-tiles", type=int, default=64)
    ap.add_argument("--bare-tiles", type=int, default=192,
                    help="tiles of the bare model measured beside each end-to-end run")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="the engine's compute threads")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 variants only")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.executors import opened, reduced
    from wsi_segment.models.bundle import demo_model_dir
    from wsi_segment.models.cpu import BF16_FLAGS, cpu_flags
    from wsi_segment.models.precision_calibration import compare_labels
    from wsi_segment.pipeline.inference.tile_reader import tile_geometry

    bench = BenchRun.start("runtime.py", argv)
    model_dir = args.model or demo_model_dir()
    bf16 = (
        bool(cpu_flags() & BF16_FLAGS) and not args.no_bf16
    )  # measured wherever the CPU has it, chosen by auto or not
    variants = [("torch", "fp32"), ("openvino", "fp32")] + ([("openvino", "bf16")] if bf16 else [])
    models = {}
    for runtime, precision in variants:  # compiles (or loads the cached graphs) off the clock
        log(f"[runtime] loading {runtime} {precision} ...")
        models[(runtime, precision)] = opened(model_dir, "cpu", precision, runtime)
    auto_runtime = opened(model_dir, "cpu", "auto", "auto")[1]
    auto = auto_runtime.report()

    slide, writer = make_slide(
        args.work / "slides" / f"tp-{args.size}-t{args.tissue:g}.svs", args.size, args.tissue,
        fast=True,
    )  # fmt: skip
    meta = models[variants[0]][0].meta
    plan = plan_like_pipeline(slide, meta, 32, 4, 4)
    tiles_all, read_wall, read_cpu = read_chunks(plan)
    n = len(tiles_all)
    tiles = tiles_all[:: max(1, n // args.model_tiles)][: args.model_tiles]
    beside = tiles_all[:: max(1, n // args.bare_tiles)][: args.bare_tiles]
    log(f"[runtime] {n} tiles on the slide; model alone on {len(tiles)}")

    # 1. model alone, interleaved
    geometry = tile_geometry(plan.grid, True)  # the slide's, where the runtimes were checked
    configs = {v: [1, args.threads] for v in variants}
    cores = len(os.sched_getaffinity(0))
    executors = {  # each of `streams` threads on its share of the cores, as the engine's
        (v, streams): models[v][1].executor(geometry, 16, max(1, cores // streams))
        for v in variants
        for streams in configs[v]
    }
    rates: dict[tuple[str, str, int], list[float]] = {}
    for r in range(args.rounds):
        for v in variants:
            for streams in configs[v]:
                wall = bare_reduced(executors[(v, streams)], tiles, 16, streams)
                rates.setdefault((*v, streams), []).append(len(tiles) / wall)
        log(f"[runtime] round {r + 1}: load {loadavg()}")
    best = {v: max(statistics.median(rates[(*v, s)]) for s in configs[v]) for v in variants}
    ref = best[("torch", "fp32")]
    rows = []
    for v in variants:
        detail = "; ".join(
            f"{s} thread(s): " + ", ".join(f"{x:.1f}" for x in rates[(*v, s)]) for s in configs[v]
        )
        rows.append((f"model alone {v[0]} {v[1]}", f"{best[v]:.1f} tiles/s",
                     f"x{best[v] / ref:.2f} torch fp32; median of rounds ({detail})"))  # fmt: skip

    # 2. agreement on real tiles (whole tiles, as evaluate scores them)
    x = real_tiles(int(meta.tile_size))
    t = int(meta.tile_size)
    labels = {v: reduced(*mr, x, 0, t, 1).labels for v, mr in models.items()}
    for v in variants[1:]:
        agreement, shifts = compare_labels(labels[("torch", "fp32")], labels[v])
        worst = max(shifts.items(), key=lambda kv: kv[1], default=("-", 0.0))
        rows.append((f"agreement {v[0]} {v[1]}", f"{100 * agreement:.3f} %",
                     f"labels vs torch fp32 on {len(x)} real tiles; largest class area shift "
                     f"{100 * worst[1]:.2f} % (label {worst[0]})"))  # fmt: skip
    rows.append(("precision auto", str(auto["autocast"]), f"{auto['runtime']}: {auto['reason']}"))
    fastest = max(best.values())
    rows.append(("reading alone", f"{n / read_wall:.0f} tiles/s",
                 f"one thread, as the reader reads, {1000 * read_cpu / n:.1f} cpu-ms a tile: "
                 f"x{n / read_wall / fastest:.1f} the fastest model alone (the issue: >= 2)"))  # fmt: skip

    # 3. end to end, interleaved
    if not args.no_e2e:
        e2e = [("torch fp32", ["--runtime", "torch", "--precision", "fp32"], ("torch", "fp32")),
               ("defaults (auto)", [], (auto_runtime.runtime, auto_runtime.precision))]  # fmt: skip
        if bf16:
            e2e.append(("openvino bf16", ["--runtime", "openvino", "--precision", "bf16"],
                        ("openvino", "bf16")))  # fmt: skip
        results: dict[str, list[tuple[float, float, float, float]]] = {}

        def bare_now(v: tuple[str, str]) -> float:
            """The bare model's tiles/s now, in the faster of its two layouts."""
            walls = [
                bare_reduced(executors[(v, streams)], beside, 16, streams) for streams in configs[v]
            ]
            return len(beside) / min(walls)

        for r in range(args.e2e_rounds):
            for name, extra, v in e2e:
                log(f"[runtime] e2e {name} round {r + 1} (load {loadavg()}) ...")
                out = args.work / "out" / "runtime" / name.split()[0]
                before = bare_now(v)
                run, summary = run_pipeline(slide, model_dir, out, extra)
                bare = (before + bare_now(v)) / 2
                tiles_run = int(summary["tiling"]["tiles"])
                inference = float(summary["timings_s"]["inference_s"])
                results.setdefault(name, []).append(
                    (tiles_run / run.wall_s, tiles_run / inference, run.maxrss_mb, bare)
                )
        base = statistics.median(w for w, _, _, _ in results["torch fp32"])
        for name, _extra, _v in e2e:
            wall = statistics.median(w for w, _, _, _ in results[name])
            stage = statistics.median(s for _, s, _, _ in results[name])
            rss = max(m for _, _, m, _ in results[name])
            ratios = [s / b for _, s, _, b in results[name]]
            bares = ", ".join(f"{b:.1f}" for _, _, _, b in results[name])
            rows.append((f"end to end {name}", f"{wall:.1f} tiles/s",
                         f"x{wall / base:.2f} torch fp32 (wall); inference stage {stage:.1f} "
                         f"tiles/s; inference stage / bare model {statistics.median(ratios):.2f} "
                         f"(bare {bares} tiles/s on {len(beside)} tiles, before and after "
                         f"each run); peak RSS {rss:.0f} MB (VmHWM); {n} tiles"))  # fmt: skip

    notes = [
        f"model: {model_dir.name if args.model else 'demo model (models/demo_model)'}",
        f"slide: {args.size} x {args.size} px synthetic, tissue {args.tissue:g} ({writer})",
        f"model alone: {len(tiles)} tiles of the slide, batch 16, {args.rounds} rounds; "
        f"end to end: {args.e2e_rounds} round(s); OpenVINO {auto.get('runtime')} "
        f"threads {torch.get_num_threads()}, a stream per compute thread",
    ]
    caps = {k: os.environ[k] for k in ISA_CAPS if k in os.environ}
    if caps:
        capability = torch.backends.cpu.get_cpu_capability()
        notes.append(f"ISA capped: {caps}; torch's ATen dispatch: {capability}")
    bench.finish(rows, notes, not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
