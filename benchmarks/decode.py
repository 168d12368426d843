"""Decode limit: how many tiles per second reading can feed a model, with 1, 2, 4, ... decoders.

    python benchmarks/decode.py                       # 12288 px bank slide, every power of 2
    python benchmarks/decode.py --size 30720 --decoders 1,4,8,16 --modes processes
    python benchmarks/decode.py --no-record
    python benchmarks/decode.py --modes device,processes --model-mpp 0.5 --device cuda

Each decoder reads its share of the pipeline's own chunk plan exactly as `wsi-segment` does
(`plan_like_pipeline`: tissue detection, the chunk grid, the fast read backend; then
`read_model_tiles` with storage-tile reuse over its own chunks), so the figure is
the ceiling reading puts on the pipeline: on a GPU machine the end-to-end goal is a fraction of
min(this, the model's limit). Two ways to run N decoders are measured side by side:

- processes  N spawned processes, each with its own slide handle (no GIL between them);
- threads    N threads in one process, each with its own slide handle (openslide and the JPEG
             decoders release the GIL; numpy cutting and resampling partly do).

A third, `device`, measures the device read path (`pipeline.inference.device_tiles`): one
thread decodes each chunk's storage tiles in one `torchvision.io.decode_jpeg` call (nvJPEG on
`--device cuda` where the tiles' header states YCbCr, libjpeg-turbo otherwise) and assembles
its model tiles on `--device`. It serves only slides whose model pixels are level pixels (the
bank slide at `--model-mpp 0.5`); otherwise its row gives the reason the CPU decoders read.

All decoders open their slide and import first, then start together on a barrier; the clock
runs from the barrier to the last decoder's end. The table is appended to RESULTS.md with the
command and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import loadavg, machine_info, record, render  # noqa: E402
from benchmarks.stages import slide_and_model  # noqa: E402
from wsi_segment.errors import ModelError  # noqa: E402
from wsi_segment.models.meta import read_model_json  # noqa: E402

MODES = ("processes", "threads", "device")


def _meta(job: dict) -> Any:
    """model.json's geometry, with `--model-mpp` in place of its mpp when given."""
    _, meta = read_model_json(job["model"])
    if job.get("model_mpp"):
        meta = dataclasses.replace(meta, mpp=float(job["model_mpp"]))
    return meta


def decode_share(job: dict, share: int, shares: int, barrier: Any) -> tuple[int, float, float]:
    """Read every `shares`-th chunk from `share` on; (tiles, start, end) in perf_counter s.

    The plan needs only model.json's tile size and mpp (read by the models' parser, no torch).
    perf_counter is CLOCK_MONOTONIC on Linux, so starts and ends compare across processes.
    """
    from benchmarks.stages import chunk_read_boxes, plan_like_pipeline, tile_reuse_reader
    from wsi_segment.pipeline.inference.tile_reader import tile_boxes
    from wsi_segment.wsi.region_reader import read_model_tiles

    p = plan_like_pipeline(
        Path(job["slide"]), _meta(job), job["overlap"], job["chunk_tiles"], job["downsample"]
    )
    specs = p.specs[share::shares]
    boxes = chunk_read_boxes(p, specs)
    reader = tile_reuse_reader(p, boxes)
    barrier.wait()
    start = time.perf_counter()
    n = 0
    for spec in specs:
        if spec.tiles:
            boxes_model = tile_boxes(spec.tiles, p.grid)
            level = p.read_level
            n += len(read_model_tiles(p.slide, boxes_model, p.level0_per_model, level, **reader))
    return n, start, time.perf_counter()


def _process_entry(job: dict, share: int, shares: int, barrier: Any, results: Any) -> None:
    results.put((share, decode_share(job, share, shares, barrier)))


def run_processes(job: dict, n: int) -> tuple[int, float]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_process_entry, args=(job, k, n, barrier, results)) for k in range(n)
    ]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=3600) for _ in procs]
    for proc in procs:
        proc.join()
    return _total(r for _, r in got)


def run_threads(job: dict, n: int) -> tuple[int, float]:
    barrier = threading.Barrier(n)
    got: list = [None] * n

    def work(k: int) -> None:
        got[k] = decode_share(job, k, n, barrier)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _total(got)


def run_device(job: dict, device_name: str) -> tuple[int, float, str]:
    """(tiles, wall s, decoder or the reason for falling back) of the device read path over
    every chunk; the first chunk is read once before the clock starts (decoder set-up)."""
    import torch

    from benchmarks.stages import plan_like_pipeline
    from wsi_segment.pipeline.inference.device_tiles import DeviceTiles
    from wsi_segment.pipeline.inference.engine_state import FirstError
    from wsi_segment.pipeline.inference.read_sources import slide_reads
    from wsi_segment.pipeline.inference.tile_reader import TileReader

    p = plan_like_pipeline(
        Path(job["slide"]), _meta(job), job["overlap"], job["chunk_tiles"], job["downsample"]
    )
    reader = TileReader(
        slide_path=job["slide"],
        backend=p.slide.backend,
        mpp_override=None,
        level0_per_model=p.level0_per_model,
        read_level=p.read_level,
        grid=p.grid,
    )
    device = torch.device(device_name)
    key = (reader.read_level, reader.level0_per_model)
    facts, tiles = slide_reads(reader.slide_path, reader.slide(), key)  # as a run opens them
    if tiles is None:
        return 0, 0.0, facts.unsupported
    found = DeviceTiles(reader, tiles, device, "nvjpeg" if device.type == "cuda" else "libjpeg")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    running = FirstError()  # never stopped
    found.read_chunk(p.specs[0], running)
    sync()
    start, n = time.perf_counter(), 0
    for spec in p.specs:
        n += len(found.read_chunk(spec, running))
    sync()
    return n, time.perf_counter() - start, found.decoder


def _total(results: Any) -> tuple[int, float]:
    """(tiles, wall s from the common start to the last end)."""
    results = list(results)
    tiles = sum(r[0] for r in results)
    return tiles, max(r[2] for r in results) - min(r[1] for r in results)


def _device_row(job: dict, device_name: str | None) -> tuple[str, str, str]:
    import torch

    name = device_name or ("cuda" if torch.cuda.is_available() else "cpu")
    tiles, wall, decoder = run_device(job, name)
    if not tiles:
        return (f"decode, device {name}", "not served", decoder)
    return (f"decode, device {name}", f"{tiles / wall:,.0f} tiles/s",
            f"{tiles} tiles in {wall:.2f} s; {decoder}, tiles assembled on {name}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cores = len(os.sched_getaffinity(0))
    powers = [1 << k for k in range(8) if (1 << k) <= cores]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12288, help="bank slide side (px)")
    ap.add_argument("--tissue", type=float, default=0.6)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: demo)")
    ap.add_argument("--decoders", default=",".join(map(str, powers)))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--chunk-tiles", type=int, default=4)
    ap.add_argument("--downsample", type=int, default=4)
    ap.add_argument("--model-mpp", type=float, default=None, help="plan at this mpp instead")
    ap.add_argument("--device", default=None, help="device mode's torch device (cuda if any)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if set(modes) - set(MODES):
        ap.error(f"--modes: choose from {MODES}")
    counts = [int(x) for x in args.decoders.split(",") if x]
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    info = machine_info()
    info["load_start"] = loadavg()
    slide, writer, model_dir, model_desc = slide_and_model(
        args.work, args.size, args.tissue, args.model
    )
    try:
        read_model_json(model_dir)  # one clear line here, not one traceback per decoder
    except ModelError as exc:
        raise SystemExit(f"error: {exc}") from exc
    job = {
        "slide": str(slide),
        "model": str(model_dir),
        "overlap": args.overlap,
        "chunk_tiles": args.chunk_tiles,
        "downsample": args.downsample,
        "model_mpp": args.model_mpp,
    }
    rows: list[tuple[str, str, str]] = []
    notes = [
        f"slide: {slide.name} ({writer}), model geometry: {model_desc}",
        "tiles/s of the pipeline's own read path (plan, aligned reads with storage-tile "
        "reuse per decoder, cut), clock from a common start to the last decoder's end",
    ]
    single: dict[str, float] = {}
    for mode in modes:
        if mode == "device":
            rows.append(_device_row(job, args.device))
            print(rows[-1], file=sys.stderr, flush=True)
            continue
        for n in counts:
            tiles, wall = (run_processes if mode == "processes" else run_threads)(job, n)
            rate = tiles / wall
            single.setdefault(mode, rate if n == 1 else float("nan"))
            base = single[mode]
            scale = f"{rate / base:.2f}x of 1 decoder ({rate / base / n:.0%} per decoder)"
            rows.append((f"decode, {n} {mode}", f"{rate:,.0f} tiles/s", f"{tiles} tiles in "
                         f"{wall:.2f} s; {scale}"))  # fmt: skip
            print(rows[-1], file=sys.stderr, flush=True)
    command = "python benchmarks/decode.py " + " ".join(sys.argv[1:] if argv is None else argv)
    block = render(rows, notes, info, command.strip(), started, time.perf_counter() - t0)
    print(block)
    if not args.no_record:
        record(block)
    rated = [r for r in rows if r[1].endswith("tiles/s")]
    if rated:
        best = max(rated, key=lambda r: float(r[1].split()[0].replace(",", "")))
        print(f"decode_limit={best[1].split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
