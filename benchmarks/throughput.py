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
             (`wsi.region_reader.read_model_box` + `cut_tiles`), one thread -> tiles/s.
3. pipeline  `wsi-segment SLIDE` as a subprocess, end to end (start-up, tissue detection,
             reading, inference, stitching, zarr, polygons, overlay, summary) -> tiles/s of
             wall clock; also its CPU seconds and peak RSS (os.wait4 rusage).
4. ratio     pipeline tiles/s / bare model tiles/s (goal >= 0.9), plus the same ratio in CPU
             seconds per tile (robust to other processes on a shared machine).
5. memory    peak RSS of `wsi-segment` on 10k, 40k and 100k px square slides (tiny model).
6. scaling   wall time for two slides of the same size with 10% and 60% tissue.
7. precision fp32 vs bf16 (+ channels_last) tiles/s, argmax agreement and max probability
             difference, on synthetic slide tiles and the real LUAD-HistoSeg sample patches.
   overlap   what the default overlap buys: tiles, time and the redundant fraction for
             several overlaps, and the agreement of each label map with a wide-overlap
             reference (how much the tile border changes the answer).

Every run prints a table and appends it, with the command and the machine, to
benchmarks/RESULTS.md (`--no-record` to skip). The last line of stdout is `ratio=X.XX`
whenever section 4 ran.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

warnings.filterwarnings("ignore", message=r"location=.*is out-of-bounds")  # tiffslide edge reads

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.slides import make_slide  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RUNS_END = "<!-- throughput.py appends runs above this line -->"
SECTIONS = ("throughput", "memory", "scaling", "precision", "overlap")
LUAD_SAMPLE = ROOT / "tests" / "data" / "luad-histoseg-sample"

# Demo architecture (pipeline/demo_model.py): resnet10t PDA classifier, DeepLabV3+ on
# resnet10t with 64 decoder channels, tile 224 at 1.0 um/px.
DEMO_ARCH = {
    "classifier": ("resnet10t", "pda"),
    "segmenter": ("tu-resnet10t", 64),
    "tile": 224,
    "mpp": 1.0,
}
# Tiny model for the memory run (as tests/conftest.py's tiny_model_dir): tile 64 at 2 um/px.
TINY_ARCH = {
    "classifier": ("resnet10t", "cam"),
    "segmenter": ("resnet18", 256),
    "tile": 64,
    "mpp": 2.0,
}


# --------------------------------------------------------------------------- helpers


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine_info() -> dict[str, Any]:
    import torch

    from models.device import cpu_flags, cpu_supports_bf16

    model_name = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = sorted(
        f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2"))
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "mem_gb": round(mem_gb, 1),
        "flags": " ".join(flags),
        "bf16": cpu_supports_bf16(),
        "gpu": gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def make_model(folder: Path, arch: dict[str, Any], name: str) -> Path:
    """A random bundle with the given architecture (same cost as trained weights)."""
    if (folder / "model.json").exists():
        return folder
    import torch

    from models.bundle import save_model
    from models.classifier import build_classifier
    from models.meta import ModelMeta
    from models.segmentation_model import SegmentationModel
    from models.segmenter import build_segmenter
    from wsi.textures import CLASS_COLORS, CLASS_NAMES

    torch.manual_seed(0)
    meta = ModelMeta(
        name, list(CLASS_NAMES), list(CLASS_COLORS), mpp=arch["mpp"], tile_size=arch["tile"]
    )
    enc, head = arch["classifier"]
    senc, dec = arch["segmenter"]
    model = SegmentationModel(
        build_classifier(enc, head, len(CLASS_NAMES)),
        build_segmenter(senc, len(CLASS_NAMES), decoder_channels=dec),
        meta,
    )
    return save_model(model, folder, weights_dtype="float16")


def default_model(work: Path) -> tuple[Path, str]:
    from models.bundle import demo_model_dir

    demo = demo_model_dir()
    if (demo / "model.json").exists() and (demo / "model.safetensors").exists():
        return demo, "demo model (models/demo_model)"
    return (
        make_model(work / "models" / "demo-arch-random", DEMO_ARCH, "bench-random-demo-arch"),
        "random weights, demo architecture (demo model not present)",
    )


@dataclass
class ChildRun:
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    returncode: int
    stderr: str = ""
    gpu: str = ""  # device utilisation during the run (GpuSampler.report)


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run a command; wall time, CPU time and peak RSS of that process (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True
    )
    err = proc.stderr.read() if proc.stderr else ""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0, proc.returncode, err)


def wsi_segment_cmd(slide: Path, model: Path, out: Path, extra: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("wsi-segment")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    return [
        *base,
        str(slide),
        "--model",
        str(model),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
        *extra,
    ]


def _storage_tiles(summary: dict) -> str:
    """Storage tiles decoded / served again (wsi.tile_reuse), when the run reports them."""
    stats = summary.get("read_stats") or {}
    if "storage_tiles_decoded" not in stats:
        return ""
    return (
        f"storage tiles decoded {stats['storage_tiles_decoded']}, "
        f"reused {stats['storage_tiles_reused']}; "
    )


class GpuSampler:
    """Device utilisation while a run lasts, from `nvidia-smi -lms` (GPU machines only).

    No GPU, or no nvidia-smi: `report()` says so and nothing is started."""

    def __init__(self, period_ms: int = 250) -> None:
        self._cmd = [
            "nvidia-smi",
            "--query-gpu=index,utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            f"-lms={period_ms}",
        ]
        self._proc: subprocess.Popen | None = None
        self._lines: list[str] = []

    def __enter__(self) -> GpuSampler:
        import torch

        if torch.cuda.is_available() and shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=10)
            self._lines = [ln for ln in out.splitlines() if ln.count(",") == 2]

    def report(self) -> str:
        if self._proc is None:
            return "GPU utilisation: n/a (no CUDA GPU or no nvidia-smi)"
        util: dict[str, list[float]] = {}
        mem: dict[str, float] = {}
        for line in self._lines:
            idx, u, m = (v.strip() for v in line.split(","))
            util.setdefault(idx, []).append(float(u))
            mem[idx] = max(mem.get(idx, 0.0), float(m))
        return "GPU utilisation: " + "; ".join(
            f"gpu{i} mean {sum(v) / len(v):.0f} %, max {max(v):.0f} %, peak mem {mem[i]:.0f} MiB"
            for i, v in sorted(util.items())
        )


def run_pipeline(slide: Path, model: Path, out: Path, extra: list[str]) -> tuple[ChildRun, dict]:
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    with GpuSampler() as gpu:
        run = run_child(wsi_segment_cmd(slide, model, out, extra), env)
    run.gpu = gpu.report()
    if run.returncode != 0:
        raise RuntimeError(f"wsi-segment failed ({run.returncode}):\n{run.stderr[-3000:]}")
    summary = json.loads((out / slide.stem / "summary.json").read_text())
    return run, summary


def zarr_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- planning


@dataclass
class Planned:
    slide: Any
    specs: list
    grid: Any
    level0_per_model: float
    read_level: int
    tiles: int
    redundant: float = 0.0
    extra: dict = field(default_factory=dict)


def plan_like_pipeline(
    slide_path: Path, model, overlap: int, chunk_tiles: int, ds: int, backend: str = "auto"
) -> Planned:
    """The chunks and tiles `wsi-segment` will run, by the same functions it uses."""
    from wsi.slide import open_slide
    from wsi.tiling import TileGrid, plan_chunks
    from wsi.tissue import detect_tissue

    slide = open_slide(str(slide_path), backend=backend)
    mpp = slide.require_mpp()
    tissue = detect_tissue(slide)
    grid = TileGrid(tile=int(model.meta.tile_size), overlap=overlap, downsample=ds)
    plan = plan_chunks(slide, mpp[0], float(model.meta.mpp), grid, chunk_tiles, tissue)
    if backend == "auto":  # chunk reads with the backend the pipeline picks (segment.py)
        try:
            from pipeline.chunk_job import fast_read_backend

            fast = fast_read_backend(slide, plan.read_level)
        except (ImportError, TypeError):  # older pipeline: the slide's own backend
            fast = None
        if fast:
            slide = open_slide(str(slide_path), backend=fast)
    return Planned(
        slide,
        plan.specs,
        grid,
        plan.level0_per_model,
        plan.read_level,
        plan.tiles,
        1.0 - (grid.stride / grid.tile) ** 2,
        {"tissue_fraction": float(tissue.fraction)},
    )


def read_chunks(p: Planned, limit_tiles: int | None = None) -> tuple[np.ndarray, float, float]:
    """Read and cut every planned tile as SlideJob.run does; (tiles, wall s, cpu s)."""
    from pipeline.chunk_inference import cut_tiles
    from wsi.region_reader import read_model_box

    try:
        from pipeline.chunk_job import tiles_read_box
    except ImportError:  # older pipeline: the whole chunk plus the margin

        def tiles_read_box(tiles, grid):
            return None

    m = p.grid.margin
    out = []
    t0, c0 = time.perf_counter(), time.process_time()
    boxes = []
    for spec in p.specs:
        x0, y0, x1, y1 = spec.core_box
        boxes.append(tiles_read_box(spec.tiles, p.grid) or (x0 - m, y0 - m, x1 + m, y1 + m))
    reader = _tile_reuse_reader(p, boxes)  # as the pipeline's prefetcher reads (if available)
    n = 0
    for spec, box in zip(p.specs, boxes, strict=True):
        image = read_model_box(p.slide, box, p.level0_per_model, p.read_level, **reader)
        out.append(cut_tiles(image, (box[0], box[1]), list(spec.tiles), p.grid))
        n += len(spec.tiles)
        if limit_tiles and n >= limit_tiles:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return np.concatenate(out), wall, cpu


def _tile_reuse_reader(p: Planned, boxes: list) -> dict:
    """`reader=` for read_model_box that decodes each storage tile once, as SlideJob.read
    with the prefetcher's TileReuse does; {} on a tree without wsi.tile_reuse."""
    try:
        from wsi.region_reader import level_read_box
        from wsi.tile_reuse import TileReuse, supports_reuse
    except ImportError:
        return {}
    level, slide = p.read_level, p.slide
    tile = slide.storage_tile_size(level)
    if not supports_reuse(slide, level, tile):
        return {}
    ds = float(slide.level_downsamples[level])
    planned = [level_read_box(b, p.level0_per_model, ds) for b in boxes]
    reuse = TileReuse(level, slide.level_dimensions[level], ds, tile, planned)
    return {"reader": lambda lx, ly, w, h: reuse.read(slide, lx, ly, w, h)}


def bare_model(
    model, tiles: np.ndarray, batch: int, streams: int = 1, gate: bool = True
) -> tuple[float, float]:
    """(wall s, process cpu s) of model.predict over all tiles in batches, tensors ready.

    streams=1: one thread, torch with all cores (the classic way). streams=k: k threads
    each running its share of the batches with cores // k torch threads (what the pipeline
    does on a CPU). Both are measured; the faster is the reference for the ratio.
    """
    import threading

    import torch

    batches = [
        torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch])).permute(0, 3, 1, 2)
        for i in range(0, len(tiles), batch)
    ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per = max(1, (cores or 1) // streams)
    before = torch.get_num_threads()

    def work(mine: list) -> None:
        torch.set_num_threads(per)
        model.predict(mine[0], gate=gate)  # warm-up of this thread (oneDNN kernels)
        ready.wait()
        for b in mine:
            model.predict(b, gate=gate)

    shares = [batches[k::streams] for k in range(streams) if batches[k::streams]]
    ready = threading.Barrier(len(shares) + 1)
    threads = [threading.Thread(target=work, args=(mine,)) for mine in shares]
    for t in threads:
        t.start()
    ready.wait()  # every thread warmed up: start the clock
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(before)
    return wall, cpu


# --------------------------------------------------------------------------- sections


def section_throughput(args, work: Path, model_dir: Path, rows: list, notes: list) -> float:
    from pipeline.model_handle import load_for_process

    size = args.size or (8192 if args.quick else 12288)
    slide, writer = make_slide(
        work / "slides" / f"tp-{size}-t{args.tissue:g}.svs", size, args.tissue, fast=args.fast
    )
    notes.append(
        f"throughput slide: {size} x {size} px, mpp 0.5, tissue {args.tissue:g} ({writer})"
    )
    model, _ = load_for_process(str(model_dir), "auto", args.precision)
    p = plan_like_pipeline(slide, model, args.overlap, args.chunk_tiles, 4, args.backend)
    log(f"[throughput] {p.tiles} tiles in {len(p.specs)} chunks; reading ...")
    all_tiles, read_wall, read_cpu = read_chunks(p)
    n = len(all_tiles)
    # The bare model runs on a sample of the same tiles (tiles/s does not depend on which).
    tiles = all_tiles[:: max(1, n // args.model_tiles)][: args.model_tiles]
    nb = len(tiles)
    configs = sorted({1, args.threads})
    bare: dict[int, list[tuple[float, float]]] = {k: [] for k in configs}
    log(f"[throughput] bare model (before) on {nb} of the tiles ...")
    for k in configs:
        bare[k].append(bare_model(model, tiles, args.batch_size, streams=k))
    extra = ["--batch-size", str(args.batch_size), "--overlap", str(args.overlap)]
    extra += ["--threads", str(args.threads), "--backend", args.backend]
    if args.precision == "fp32":
        extra += ["--precision", "fp32"]
    log("[throughput] pipeline (wsi-segment subprocess) ...")
    load_before = loadavg()
    run, summary = run_pipeline(slide, model_dir, work / "out" / "throughput", extra)
    log("[throughput] bare model (after) ...")
    for k in reversed(configs):
        bare[k].append(bare_model(model, tiles, args.batch_size, streams=k))
    tiles_run = int(summary["tiling"]["tiles"])
    assert tiles_run == n, (tiles_run, n)
    rate = {k: len(v) * nb / sum(w for w, _ in v) for k, v in bare.items()}
    best = max(rate, key=rate.get)
    model_rate = rate[best]
    model_cpu_per_tile = sum(c for _, c in bare[best]) / (len(bare[best]) * nb)
    cores = os.cpu_count() or 1
    bare_detail = "; ".join(
        f"{k} stream(s) x {max(1, cores // k)} torch thr: "
        + ", ".join(f"{nb / w:.1f}" for w, _ in v)
        + f" (before, after), {1000 * sum(c for _, c in v) / (len(v) * nb):.0f} cpu-ms/tile"
        for k, v in bare.items()
    )
    pipe_rate = n / run.wall_s
    ratio = pipe_rate / model_rate
    cpu_ratio = model_cpu_per_tile / (run.cpu_s / n)
    t = summary.get("timings_s", {})
    zbytes = zarr_bytes(work / "out" / "throughput" / slide.stem / "probabilities.ome.zarr")
    prec = "bf16+channels_last" if model.autocast_dtype is not None else "fp32"
    rows += [
        ("1 bare model", f"{model_rate:.1f} tiles/s", f"best of: {bare_detail}; {prec}, "
         f"batch {args.batch_size}, tile {p.grid.tile}, {nb} tiles"),
        ("2 read only", f"{n / read_wall:.0f} tiles/s", f"1 thread, {1000 * read_cpu / n:.1f} "
         f"cpu-ms/tile = {100 * read_cpu / n / model_cpu_per_tile:.1f}% of the model's; "
         f"{p.slide.backend}, level {p.read_level}, {p.level0_per_model:g} level-0 px per model px"),
        ("3 pipeline", f"{pipe_rate:.1f} tiles/s", f"{n} tiles, {run.wall_s:.1f} s wall, "
         f"{run.cpu_s:.1f} cpu-s, peak RSS {run.maxrss_mb:.0f} MB; inside: open+model "
         f"{t.get('open_and_model_s', 0):.1f} s, tissue+plan {t.get('tissue_and_plan_s', 0):.1f}"
         f" s{_model_load(t)}, inference {t.get('inference_s', 0):.1f} s, outputs {t.get('outputs_s', 0):.1f} s;"
         f" zarr {zbytes / 1e6:.2f} MB; overlap {args.overlap} (redundant "
         f"{summary['tiling']['redundant_fraction']:.3f}), threads {args.threads}; "
         f"{_storage_tiles(summary)}{run.gpu}"),
        ("4 ratio", f"{ratio:.2f}", f"wall (goal >= 0.9); cpu-time ratio {cpu_ratio:.2f}; "
         f"inference stage alone {n / max(t.get('inference_s', 1e-9), 1e-9) / model_rate:.2f}; "
         f"load avg {load_before} -> {loadavg()}"),
    ]  # fmt: skip
    return ratio


def _model_load(timings: dict) -> str:
    """Model load runs in the background during tissue+plan (pipeline/segment.py)."""
    if "model_load_s" not in timings:
        return ""
    return f" (model load {timings['model_load_s']:.1f} s alongside)"


def section_memory(args, work: Path, rows: list, notes: list) -> None:
    tiny = make_model(work / "models" / "tiny-random", TINY_ARCH, "bench-tiny-random")
    sizes = [int(s) for s in args.memory_sizes.split(",")]
    frac = args.memory_tissue
    for size in sizes:
        slide, writer = make_slide(
            work / "slides" / f"mem-{size}-t{frac:g}.svs", size, frac, fast=args.fast
        )
        log(f"[memory] {size} px slide ({writer}) ...")
        load = loadavg()
        run, summary = run_pipeline(slide, tiny, work / "out" / f"mem-{size}", [])
        tiles = int(summary["tiling"]["tiles"])
        zb = zarr_bytes(work / "out" / f"mem-{size}" / slide.stem / "probabilities.ome.zarr")
        rows.append(
            (
                f"5 memory {size // 1000}k",
                f"{run.maxrss_mb:.0f} MB",
                f"peak RSS; {tiles} tiles, {run.wall_s:.0f} s wall, tissue {frac:g} ({writer}); "
                f"zarr {zb / 1e6:.1f} MB; load {load}",
            )
        )
    notes.append(f"memory model: random tiny bundle ({TINY_ARCH})")


def section_scaling(args, work: Path, model_dir: Path, rows: list, notes: list) -> None:
    size = args.scaling_size
    res = {}
    for frac in (0.1, 0.6):
        slide, _writer = make_slide(
            work / "slides" / f"tp-{size}-t{frac:g}.svs", size, frac, fast=args.fast
        )
        log(f"[scaling] {size} px, tissue {frac} ...")
        run, summary = run_pipeline(slide, model_dir, work / "out" / f"scale-{frac:g}", [])
        res[frac] = (run, int(summary["tiling"]["tiles"]), summary["tissue"])
    (r1, n1, _), (r6, n6, _) = res[0.1], res[0.6]
    for frac, (run, n, tissue) in res.items():
        rows.append(
            (
                f"6 scaling {int(frac * 100)}%",
                f"{run.wall_s:.1f} s",
                f"{n} tiles, {size} px square, detected tissue "
                f"{tissue['detected_fraction_of_slide']:.2f}",
            )
        )
    rows.append(
        (
            "6 scaling ratio",
            f"{r6.wall_s / r1.wall_s:.2f}x time",
            f"for {n6 / max(n1, 1):.2f}x tiles (60% vs 10% tissue); time - fixed costs "
            "follows tiles",
        )
    )


def section_precision(args, work: Path, model_dir: Path, rows: list, notes: list) -> None:
    import torch
    from PIL import Image

    from models.bundle import load_model

    size = 6144
    slide, _ = make_slide(work / "slides" / f"tp-{size}-t0.6.svs", size, 0.6, fast=args.fast)
    model = load_model(model_dir)
    model.to_device("cpu", "fp32")
    p = plan_like_pipeline(slide, model, args.overlap, args.chunk_tiles, 4)
    tiles, _, _ = read_chunks(p, limit_tiles=args.precision_tiles)
    tiles = tiles[: args.precision_tiles]
    sets = {"synthetic slide": tiles}
    real = sorted(LUAD_SAMPLE.rglob("*.png"))
    real = [f for f in real if "mask" not in f.parts]
    t = int(model.meta.tile_size)
    if real:
        imgs = [np.asarray(Image.open(f).convert("RGB").resize((t, t))) for f in real]
        sets["LUAD-HistoSeg sample (real)"] = np.stack(imgs)

    def run(x: np.ndarray) -> tuple[np.ndarray, float]:
        out, t0 = [], time.perf_counter()
        for i in range(0, len(x), args.batch_size):
            b = torch.from_numpy(np.ascontiguousarray(x[i : i + args.batch_size]))
            out.append(model.predict(b.permute(0, 3, 1, 2))[0].numpy())
        return np.concatenate(out), time.perf_counter() - t0

    from models.device import cpu_supports_bf16

    for name, x in sets.items():
        model.to_device("cpu", "fp32")
        run(x[: args.batch_size])
        p32, s32 = run(x)
        if not cpu_supports_bf16():
            rows.append((f"7 precision {name}", f"{len(x) / s32:.1f} tiles/s fp32", "no bf16"))
            continue
        model.to_device("cpu", "bf16")
        run(x[: args.batch_size])
        p16, s16 = run(x)
        agree = float((p32.argmax(1) == p16.argmax(1)).mean())
        diff = float(np.abs(p32 - p16).max())
        mean_diff = float(np.abs(p32 - p16).mean())
        rows.append(
            (
                f"7 precision {name}",
                f"{100 * agree:.2f}% agree",
                f"{len(x)} tiles; fp32 {len(x) / s32:.1f} tiles/s, bf16+channels_last "
                f"{len(x) / s16:.1f} tiles/s ({s32 / s16:.2f}x); max |dp| {diff:.3f}, "
                f"mean |dp| {mean_diff:.4f}",
            )
        )


def section_overlap(args, work: Path, model_dir: Path, rows: list, notes: list) -> None:
    import zarr

    size = 6144
    slide, _ = make_slide(work / "slides" / f"tp-{size}-t0.6.svs", size, 0.6, fast=args.fast)
    overlaps = [int(o) for o in args.overlaps.split(",")]
    ref_o = max(overlaps)
    labels, info = {}, {}
    for o in overlaps:
        out = work / "out" / f"overlap-{o}"
        log(f"[overlap] {o} ...")
        _run, summary = run_pipeline(slide, model_dir, out, ["--overlap", str(o)])
        z = zarr.open_group(str(out / slide.stem / "probabilities.ome.zarr"), mode="r")
        probs = np.asarray(z["0"][:])
        lab = probs.argmax(0)
        lab[probs.max(0) == 0] = 255
        labels[o] = lab
        t = summary["timings_s"]
        info[o] = (int(summary["tiling"]["tiles"]), t["inference_s"], summary["tiling"])
    ref = labels[ref_o]
    valid = ref != 255
    for o in overlaps:
        tiles, inf_s, tiling = info[o]
        agree = float((labels[o][valid] == ref[valid]).mean()) if valid.any() else 1.0
        rows.append(
            (
                f"overlap {o}",
                f"{100 * agree:.2f}% = ref",
                f"{tiles} tiles, inference {inf_s:.1f} s, redundant fraction "
                f"{tiling['redundant_fraction']:.3f}; agreement of output labels with overlap "
                f"{ref_o} (tissue pixels)",
            )
        )


# --------------------------------------------------------------------------- output


def render(rows: list, notes: list, info: dict, command: str, started: str, wall: float) -> str:
    lines = [
        f"### {started} UTC",
        "",
        f"`{command}` ({wall:.0f} s)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['mem_gb']} GB, flags "
        f"`{info['flags']}`, GPU {info['gpu']}; torch {info['torch']} "
        f"({info['torch_threads']} threads), Python {info['python']}; "
        f"load average at start {info['load_start']}, at end {loadavg()}.",
        "",
    ]
    lines += [f"- {n}" for n in notes]
    lines += ["", "| item | figure | details |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def record(block: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\n## Throughput, memory, scaling, precision "
            "(benchmarks/throughput.py)\n\n" + RUNS_END + "\n"
        )
    text = RESULTS.read_text()
    if RUNS_END not in text:
        text = text.rstrip("\n") + "\n\n" + RUNS_END + "\n"
    text = text.replace(RUNS_END, block + "\n" + RUNS_END, 1)
    RESULTS.write_text(text)


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
    ap.add_argument("--backend", choices=("auto", "openslide", "tiffslide"), default="auto")
    ap.add_argument("--model-tiles", type=int, default=96, help="bare-model sample size")
    ap.add_argument("--memory-sizes", default="10000,40000,100000")
    ap.add_argument("--memory-tissue", type=float, default=0.05)
    ap.add_argument("--scaling-size", type=int, default=10240)
    ap.add_argument("--precision-tiles", type=int, default=96)
    ap.add_argument("--overlaps", default="0,16,32,64", help="overlap section; max = reference")
    ap.add_argument("--fast", action="store_true", help="bank slides, not wsi.synthetic")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    only = ["throughput"] if args.quick else list(SECTIONS)
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
