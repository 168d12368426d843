"""The device section of throughput.py: is the pipeline as fast as min(decode, model)?

    python benchmarks/throughput.py --only device --device cuda --size 30720 --fast \
        --batch-size 64 --threads 16 --decoders 1,4,8,16

Rows, all on the same slide and tiles in one run:
- model forward, input and output on the device (tiles uploaded once, no copy back);
- model with reduced outputs (the torch executor of the tile graph: core, d x d mean, gate, uint8, labels,
  copied to the host) and bytes per tile that cross;
- `predict` as callers of full maps get it (float32 maps copied back), for comparison;
- decode limit with N decoder processes (benchmarks/decode.py);
- the pipeline end to end (`wsi-segment` subprocess), with GPU utilisation beside it;
- ratio = pipeline / min(decode limit, reduced-model limit);
- the pipeline with `--read-device gpu` and, on the same plan, `--read-device cpu`
  (`--read-devices`): the slide's mpp is overridden to the model's (`--mpp`), so model pixels
  are level-0 pixels, the only plan the device read path serves (more tiles than the rows
  above); each row says which read path ran and why (summary.json `run_stats`).
On a machine without a GPU the same rows are measured on the CPU (`--device cpu`): a proxy
that checks the code path, not the GPU figure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.decode import run_processes
from benchmarks.measure import loadavg, log, run_pipeline
from benchmarks.slides import make_slide
from benchmarks.stages import plan_like_pipeline, read_chunks


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(model: Any, batches: list, fn: Any, repeat: int = 2) -> float:
    """Best tiles/s of `repeat` passes over `batches` after one warm-up batch."""
    fn(batches[0])
    _sync(model.device)
    best = 0.0
    n = sum(len(b) for b in batches)
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        _sync(model.device)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def model_rates(
    model: Any, runtime: Any, tiles: np.ndarray, batch: int, grid: Any, downsample: int
) -> dict:
    """tiles/s of the forward alone, with reduced outputs, and with full maps copied back."""
    import torch

    from wsi_segment.models.device import autocast
    from wsi_segment.models.runtimes.executor import TORCH_DTYPES, TorchExecutor
    from wsi_segment.models.runtimes.tile_io import Geometry

    dev = model.device
    dtype = TORCH_DTYPES[runtime.precision]
    host = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)
    host = host.repeat(-(-batch // len(host)), 1, 1, 1)  # a small slide: one whole batch
    # whole batches only: a CUDA graph runs the batch it was captured for
    on_dev = [host[i : i + batch].to(dev) for i in range(0, len(host) - batch + 1, batch)]
    margin, core = grid.margin, grid.stride

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> None:
        xx = model.preprocess(x)
        with autocast(dev, dtype):
            model.classifier(xx)
            torch.softmax(model.segmenter(xx).float(), dim=1)

    reduced_bytes: list[int] = []

    geometry = Geometry(grid.tile, margin, core, downsample, True)
    eager = TorchExecutor(model, geometry, runtime.precision)
    planned = runtime.executor(geometry, batch)  # the run's: on a GPU, a CUDA graph

    def reduced_by(executor: Any) -> Any:
        def reduced(x: torch.Tensor) -> None:
            out = executor.run(x.permute(0, 2, 3, 1))
            reduced_bytes.append(out.nbytes // len(x))

        return reduced

    def full(x: torch.Tensor) -> None:
        model.predict(x, dtype=dtype)

    return {
        "forward": _timed(model, on_dev, forward),
        "reduced": _timed(model, on_dev, reduced_by(eager)),
        "planned": _timed(model, on_dev, reduced_by(planned)),
        "planned_kind": type(planned).__name__,
        "full": _timed(model, on_dev, full, repeat=1),
        "reduced_bytes": reduced_bytes[-1],
        "full_bytes": 4 * len(model.meta.classes) * grid.tile**2 + 4 * len(model.meta.classes),
    }


def section_device(
    args: argparse.Namespace, work: Path, model_dir: Path, rows: list, notes: list
) -> float:
    """The device rows and the ratio pipeline / min(decode limit, reduced-model limit)."""
    from benchmarks.executors import opened

    size = args.size or 12288
    slide, writer = make_slide(
        work / "slides" / f"tp-{size}-t{args.tissue:g}.svs", size, args.tissue, fast=args.fast
    )
    notes.append(f"device slide: {size} x {size} px, mpp 0.5, tissue {args.tissue:g} ({writer})")
    model, runtime = opened(model_dir, args.device, args.precision, "torch")
    p = plan_like_pipeline(slide, model.meta, args.overlap, args.chunk_tiles, 4, args.backend)
    log(f"[device] {p.tiles} tiles; reading a sample for the model rows ...")
    tiles, _, _ = read_chunks(p, limit_tiles=max(args.model_tiles, 4 * args.batch_size))
    tiles = tiles[: max(args.model_tiles, 4 * args.batch_size)]
    rates = model_rates(model, runtime, tiles, args.batch_size, p.grid, 4)
    prec = runtime.precision
    where = (
        f"{model.device}, {prec}, batch {args.batch_size}, tile {p.grid.tile}, {len(tiles)} tiles"
    )
    log("[device] decode limit ...")
    job = {
        "slide": str(slide),
        "model": str(model_dir),
        "overlap": args.overlap,
        "chunk_tiles": args.chunk_tiles,
        "downsample": 4,
    }
    decode: dict[int, float] = {}
    for n in [int(x) for x in args.decoders.split(",") if x]:
        got, wall = run_processes(job, n)
        decode[n] = got / wall
    decode_limit = max(decode.values())
    log("[device] pipeline (wsi-segment subprocess) ...")
    extra = ["--device", args.device, "--batch-size", str(args.batch_size)]
    extra += ["--overlap", str(args.overlap), "--backend", args.backend]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.precision == "fp32":
        extra += ["--precision", "fp32"]
    load_before = loadavg()
    run, summary = run_pipeline(slide, model_dir, work / "out" / "device", extra)
    n = int(summary["tiling"]["tiles"])
    t = summary.get("timings_s", {})
    pipe = n / run.wall_s
    stage = n / max(t.get("inference_s", 1e-9), 1e-9)
    limit = min(decode_limit, rates["planned"])
    ratio = pipe / limit
    rows += [
        ("device: model forward", f"{rates['forward']:,.0f} tiles/s",
         f"input and output on the device; {where}"),
        ("device: model reduced", f"{rates['reduced']:,.0f} tiles/s",
         f"the tile graph, copied back: {rates['reduced_bytes']:,} B/tile "
         f"(full maps: {rates['full_bytes']:,} B/tile)"),
        (f"device: model reduced, {rates['planned_kind']}", f"{rates['planned']:,.0f} tiles/s",
         "the executor the run's plan builds (on a GPU: the tile graph as one CUDA graph)"),
        ("device: predict full maps", f"{rates['full']:,.0f} tiles/s", "float32 maps back"),
        ("device: decode limit", f"{decode_limit:,.0f} tiles/s",
         "; ".join(f"{k} proc: {v:,.0f}" for k, v in decode.items())),
        ("device: pipeline", f"{pipe:,.1f} tiles/s",
         f"{n} tiles, {run.wall_s:.1f} s wall (inference stage {stage:,.1f} tiles/s), peak RSS "
         f"{run.maxrss_mb:.0f} MB; {run.gpu}"),
        ("device: ratio", f"{ratio:.2f}",
         f"pipeline / min(decode {decode_limit:,.0f}, planned executor {rates['planned']:,.0f}); "
         f"inference stage alone {stage / limit:.2f}; load {load_before} -> {loadavg()}"),
    ]  # fmt: skip
    if args.device == "cuda":  # the same run with every batch launched from Python
        eager, _ = run_pipeline(
            slide, model_dir, work / "out" / "eager", [*extra, "--no-cuda-graphs"]
        )
        rows.append(("device: pipeline --no-cuda-graphs", f"{n / eager.wall_s:,.1f} tiles/s",
                     f"{eager.wall_s:.1f} s wall; {eager.gpu}"))  # fmt: skip
    for read_device in [x.strip() for x in args.read_devices.split(",") if x.strip()]:
        rows.append(read_device_row(slide, model_dir, work, extra, model.meta.mpp, read_device))
    return ratio


def read_device_row(
    slide: Path, model_dir: Path, work: Path, extra: list[str], model_mpp: float, read: str
) -> tuple[str, str, str]:
    """The pipeline with `--read-device read` at model pixels = level-0 pixels."""
    log(f"[device] pipeline --read-device {read} ...")
    more = [*extra, "--read-device", read, "--mpp", f"{model_mpp:g}"]
    run, summary = run_pipeline(slide, model_dir, work / "out" / f"read-{read}", more)
    n = int(summary["tiling"]["tiles"])
    t = summary.get("timings_s", {})
    stage = n / max(t.get("inference_s", 1e-9), 1e-9)
    stats = summary.get("run_stats", {})
    reads = summary.get("read_stats", {})
    return (
        f"device: pipeline --read-device {read}",
        f"{n / run.wall_s:,.1f} tiles/s",
        f"--mpp {model_mpp:g}: {n} tiles, {run.wall_s:.1f} s wall (inference stage "
        f"{stage:,.1f} tiles/s); read {stats.get('read_device')} "
        f"({stats.get('read_device_reason')}), storage tiles {reads or 'not counted'}; "
        f"{run.gpu}",
    )
