"""OpenVINO thread layouts and kernels on this CPU (issue 33): why the engine runs a stream per
compute thread, and where bf16 time goes.

    python benchmarks/openvino_layout.py                 # demo model, fp32 and bf16
    python benchmarks/openvino_layout.py --batches 8 --no-record

In one run, on the demo model's (or `--model`'s) slide-path graph at 224 px, batch 16:

1. layouts   two calling threads (as the engine's two compute threads) on one stream of all
             cores, then on a stream each of half the cores; each alone and beside a thread
             decoding JPEG tiles without pause (the slide reader's work on the same cores)
             -> tiles/s of the model, decodes/s of the reader, interleaved round by round.
2. kernels   OpenVINO's per-layer counters (PERF_COUNT) for each precision: which kernel
             ran each layer type (e.g. brgconv_avx512_bf16) and its share of the time; the
             instruction set the CPU plugin chose tells bf16 hardware from emulation.
"""

from __future__ import annotations

import argparse
import collections
import io
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import BenchRun, log  # noqa: E402

BATCH = 16
_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def slide_path_graph(model_dir: Path, cache: Path) -> tuple[Any, int]:
    """The exported graph of the slide path (margin 16, downsample 4), batch 16, and its tile."""
    from wsi_segment.models.bundle import load_bundle
    from wsi_segment.models.cpu import cpu_flags
    from wsi_segment.models.runtimes.openvino_runtime import OpenVINOGraphs
    from wsi_segment.models.runtimes.tile_io import Geometry

    model = load_bundle(model_dir)
    tile = int(model.meta.tile_size)
    geometry = Geometry(tile, 16, tile - 32, 4, True)
    graphs = OpenVINOGraphs(model, "fp32", 2, cpu_flags(), cache)
    graph = graphs.exported_graph(geometry)
    graph.reshape([BATCH, tile, tile, 3])
    return graph, tile


def compile_layout(graph: Any, precision: str, threads: int, streams: int, **extra: Any) -> Any:
    from wsi_segment.models.runtimes.openvino_runtime import openvino_core  # as a run's

    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION[precision],
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": streams,
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        "ENABLE_CPU_PINNING": False,
        **extra,
    }
    return openvino_core().compile_model(graph, "CPU", config)


def two_callers(compiled: Any, x: Any, batches: int, jpeg: bytes | None) -> tuple[float, float]:
    """Tiles/s of two threads inferring `batches` batches between them, and decodes/s of a
    JPEG-decoding thread beside them (0 without `jpeg`)."""
    from PIL import Image

    requests = [compiled.create_infer_request() for _ in range(2)]
    for request in requests:
        request.infer([x])
    stop, decoded = threading.Event(), [0]

    def decode() -> None:
        while not stop.is_set():
            Image.open(io.BytesIO(jpeg or b"")).convert("RGB").resize((256, 256))
            decoded[0] += 1

    def infer(request: Any) -> None:
        for _ in range(batches // 2):
            request.infer([x])

    reader = threading.Thread(target=decode) if jpeg else None
    if reader:
        reader.start()
    t0 = time.perf_counter()
    callers = [threading.Thread(target=infer, args=(r,)) for r in requests]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    wall = time.perf_counter() - t0
    stop.set()
    if reader:
        reader.join()
    return BATCH * 2 * (batches // 2) / wall, decoded[0] / wall


def kernels(compiled: Any, x: Any) -> list[tuple[str, str, float, int]]:
    """(layer type, kernel, ms, layers) per kernel, slowest first, from one profiled batch."""
    request = compiled.create_infer_request()
    request.infer([x])
    request.infer([x])
    ms: collections.Counter[tuple[str, str]] = collections.Counter()
    count: collections.Counter[tuple[str, str]] = collections.Counter()
    for layer in request.profiling_info:
        ms[(layer.node_type, layer.exec_type)] += layer.real_time.total_seconds() * 1e3
        count[(layer.node_type, layer.exec_type)] += 1
    return [(t, k, v, count[(t, k)]) for (t, k), v in ms.most_common()]


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "demo_model")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench"))
    ap.add_argument("--threads", type=int, default=2, help="cores the model uses")
    ap.add_argument("--batches", type=int, default=12, help="batches per layout and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    run = BenchRun.start("openvino_layout.py", argv)
    graph, tile = slide_path_graph(args.model, args.work / "openvino-cache")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH, tile, tile, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    noise = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=80)
    jpeg = buffer.getvalue()
    n = args.threads
    layouts = {f"1 stream x {n} cores": 1, f"2 streams x {max(1, n // 2)} cores": 2}
    rows = []
    for precision in args.precisions.split(","):
        compiled = {name: compile_layout(graph, precision, n, s) for name, s in layouts.items()}
        rates: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            for name, c in compiled.items():
                for reader in (False, True):
                    got = two_callers(c, x, args.batches, jpeg if reader else None)
                    rates.setdefault((name, reader), []).append(got)
            log(f"[layout] {precision} round {r + 1}")
        base = statistics.median(t for t, _ in rates[(next(iter(layouts)), False)])
        for (name, reader), per_round in rates.items():
            tps = statistics.median(t for t, _ in per_round)
            dps = statistics.median(d for _, d in per_round)
            beside = f"beside a decoding thread ({dps:.0f} decodes/s)" if reader else "alone"
            rounds = ", ".join(f"{t:.1f}" for t, _ in per_round)
            rows.append((f"{precision} {name}, {beside}", f"{tps:.1f} tiles/s",
                         f"x{tps / base:.2f} one stream alone; rounds {rounds}"))  # fmt: skip
        profiled = compile_layout(graph, precision, n, 1, PERF_COUNT=True)
        found = kernels(profiled, x)
        total = sum(ms for _, _, ms, _ in found)
        for kind, kernel, ms, layers in found[:4]:
            rows.append((f"{precision} kernels: {kind}", kernel,
                         f"{ms:.0f} ms of {total:.0f} ms profiled ({100 * ms / total:.0f} %), "
                         f"{layers} layers, one batch of {BATCH}"))  # fmt: skip
    notes = [
        f"model: {args.model.name}, slide-path graph (margin 16, downsample 4, gate), "
        f"{tile} px tiles, batch {BATCH}, {args.batches} batches per layout and round, "
        f"{args.rounds} rounds; OpenVINO threads {n}, streams unpinned",
    ]
    run.finish(rows, notes, keep=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
