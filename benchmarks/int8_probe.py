"""int8 by NNCF post-training quantization of the demo model's OpenVINO tile graph: how fast
against OpenVINO fp32 on this CPU, where the time goes per layer kind, and how many labels it
keeps (the rule for an approximation: >= 99.5 % of fp32's labels, no class's area moved by
more than 1 %).

    pip install nncf==3.4.0            # not a dependency of the project (yet)
    python benchmarks/int8_probe.py [--preset mixed|performance] [--seconds 8]

The graph is the slide path's tile graph on whole tiles (uint8 in; probabilities, labels and
the classifier's probabilities out), exported as a run exports it
(`OpenVINOGraphs.exported_graph`), quantized on the package's calibration tiles (real CMU-1
tissue), and compared on those and on 35 other real tiles of the CMU slide at the model's
1 um/px. Both graphs are compiled for batches of 16 on 2 threads in one stream.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def real_tiles() -> tuple[np.ndarray, np.ndarray]:
    """(calibration tiles, evaluation tiles), uint8 (N, 224, 224, 3), both real tissue."""
    from wsi_segment.models.precision_calibration import calibration_tiles
    from wsi_segment.wsi.region_reader import read_model_tiles
    from wsi_segment.wsi.slide import open_slide

    calibration = np.ascontiguousarray(calibration_tiles(224).transpose(0, 2, 3, 1))
    with open_slide(ROOT / "tests/data/CMU-1-Small-Region.svs") as slide:
        boxes = [(x, y, x + 224, y + 224) for y in range(0, 1256, 200) for x in range(0, 884, 200)]
        evaluation = read_model_tiles(slide, boxes, 1.0 / 0.499, 0)
    return calibration, evaluation


def compiled(model: Any, threads: int, profile: bool = False) -> Any:
    from wsi_segment.models.runtimes.openvino_runtime import openvino_core

    model = model.clone()
    model.reshape([BATCH, 224, 224, 3])
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "PERF_COUNT": profile,
    }
    return openvino_core().compile_model(model, "CPU", config)


def labels(graph: Any, tiles: np.ndarray) -> np.ndarray:
    """The graph's labels of `tiles`, in batches of 16 (the last one padded)."""
    request, out = graph.create_infer_request(), []
    for i in range(0, len(tiles), BATCH):
        part = tiles[i : i + BATCH]
        padded = np.concatenate([part, np.repeat(part[-1:], BATCH - len(part), 0)])
        out.append(np.array(request.infer([np.ascontiguousarray(padded)])[1])[: len(part)])
    return np.concatenate(out)


def tiles_per_second(graph: Any, batch: np.ndarray, seconds: float) -> float:
    request = graph.create_infer_request()
    request.infer([batch])
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        request.infer([batch])
        n += BATCH
    return n / (time.perf_counter() - start)


def layer_times(graph: Any, batch: np.ndarray) -> tuple[float, list[tuple[str, float]]]:
    """ms per batch in all, and the four costliest layer kinds (OpenVINO's own counters)."""
    request = graph.create_infer_request()
    for _ in range(3):
        request.infer([batch])
    kinds: dict[str, float] = defaultdict(float)
    for layer in request.profiling_info:
        kinds[f"{layer.node_type}:{layer.exec_type}"] += layer.real_time.total_seconds() * 1000
    worst = sorted(kinds.items(), key=lambda kv: -kv[1])[:4]
    return sum(kinds.values()), worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("mixed", "performance"), default="mixed")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    nncf = importlib.import_module("nncf")  # not a dependency: installed by hand

    from wsi_segment.models.bundle import demo_model_dir, load_bundle
    from wsi_segment.models.cpu import cpu_flags
    from wsi_segment.models.precision_calibration import compare_labels
    from wsi_segment.models.runtimes.openvino_runtime import OpenVINOGraphs
    from wsi_segment.models.runtimes.tile_io import Geometry

    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    print("cpu flags:", " ".join(f for f in wanted if f in flags) or "none of", wanted)
    calibration, evaluation = real_tiles()
    with tempfile.TemporaryDirectory() as cache:
        graphs = OpenVINOGraphs(load_bundle(demo_model_dir()), "fp32", 2, flags, Path(cache))
        fp32 = graphs.exported_graph(Geometry.whole(224))
    preset = getattr(nncf.QuantizationPreset, args.preset.upper())
    data = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    start = time.perf_counter()
    int8 = nncf.quantize(fp32, data, subset_size=len(calibration), preset=preset)
    print(f"quantized in {time.perf_counter() - start:.1f} s ({args.preset} preset)")
    graphs_by_name = {"fp32": compiled(fp32, args.threads), "int8": compiled(int8, args.threads)}
    for name, tiles in (("calibration", calibration), ("evaluation", evaluation)):
        ref, low = (labels(g, tiles) for g in graphs_by_name.values())
        agreement, shifts = compare_labels(ref, low)
        worst = max(shifts.values(), default=0.0)
        print(
            f"{name} tiles ({len(tiles)}): labels {100 * agreement:.2f} % equal, "
            f"largest class-area shift {100 * worst:.2f} %"
        )
    batch = np.ascontiguousarray(np.resize(evaluation, (BATCH, 224, 224, 3)))
    speed = {k: tiles_per_second(g, batch, args.seconds) for k, g in graphs_by_name.items()}
    print(
        f"fp32 {speed['fp32']:.1f} tiles/s, int8 {speed['int8']:.1f}: "
        f"{speed['int8'] / speed['fp32']:.2f}x"
    )
    for name, model in (("fp32", fp32), ("int8", int8)):
        total, costliest = layer_times(compiled(model, args.threads, profile=True), batch)
        shown = ", ".join(f"{k} {v:.0f}" for k, v in costliest)
        print(f"{name}: {total:.0f} ms a batch of {BATCH}; {shown}")


if __name__ == "__main__":
    main()
