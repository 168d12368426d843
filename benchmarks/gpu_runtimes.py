"""GPU runtimes worth having (issue 33): today's torch path against torch.compile and TensorRT.

    python benchmarks/gpu_runtimes.py                       # on the lent GPU (cuda)
    python benchmarks/gpu_runtimes.py --device cpu --batch 4 --rounds 1 --no-record  # dry run

The issue asks to measure these before shipping any of them. Every variant runs the whole
graph a tile goes through in the engine (`models.runtimes.graph.TileGraph`: scaling,
classifier, segmenter, gate, reduction to the uint8 the zarr stores) at the engine's geometry
(224 px tiles, margin 16, core 192, 4 x 4 means), on uint8 tiles already on the device, in
the precision the run policy picks there (`--precision auto`: bf16 autocast on a GPU that has
it), weights channels_last:

- `torch`              the torch executor of the tile graph, as the engine calls it (today's path)
- `compile`            `torch.compile(TileGraph)` (inductor, default mode)
- `compile-autotune`   mode `max-autotune-no-cudagraphs` (kernels chosen by measurement)
- `compile-cudagraphs` mode `reduce-overhead` (the fixed batch shape replayed as a CUDA graph)
- `tensorrt`           `torch_tensorrt.compile(..., ir="dynamo")` where torch-tensorrt imports
                       (its wheels are large: see ../shared/gpu/README.md for carrying extras)

Per variant: compile seconds (the first call), tiles/s (the median of `--rounds` interleaved
rounds of `--batches` batches, the device synchronised around each round), and against the
torch path on real tiles (the 18 LUAD-HistoSeg sample patches and the 6 CMU-1 calibration
tiles, padded to the batch as the engine pads, at the engine's geometry): the share of the
stored labels that agree and the largest uint8 probability difference. A variant that fails says why in its row. The table is appended
to benchmarks/RESULTS.md unless `--no-record`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import BenchRun, log  # noqa: E402

MARGIN, CORE, DOWNSAMPLE = 16, 192, 4  # the engine's geometry at the default overlap 32
Outputs = tuple[Any, Any]  # (uint8 probabilities, uint8 labels) on the device
Runner = Callable[[Any], Outputs]


def graph_of(model: Any, tile: int, margin: int, core: int, downsample: int) -> Any:
    """The model's whole tile graph at one geometry, gated, on the model's device."""
    from wsi_segment.models.runtimes.graph import TileGraph
    from wsi_segment.models.runtimes.tile_io import Geometry

    graph = TileGraph(model, Geometry(tile, margin, core, downsample, True))
    return graph.to(model.device).eval()


def autocast_runner(module: Any, device: str, dtype: Any) -> Runner:
    """Call `module` on NHWC uint8 tiles under the run's autocast, outputs (probs, labels)."""
    import torch

    def run(tiles: Any) -> Outputs:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            probs, labels, _ = module(tiles)
        return probs, labels

    return run


def variants(
    model: Any, runtime: Any, device: str, tile: int, margin: int, core: int, ds: int, batch: int
) -> dict[str, Any]:
    """name -> a runner, or the reason it cannot run here (a string)."""
    import torch

    from wsi_segment.models.runtimes.executor import TORCH_DTYPES, CudaGraphExecutor, TorchExecutor
    from wsi_segment.models.runtimes.tile_io import Geometry

    dtype = TORCH_DTYPES[runtime.precision]
    geometry = Geometry(tile, margin, core, ds, True)

    def executed(executor: Any) -> Any:
        def run(tiles: Any) -> Outputs:
            out = executor.run(tiles)  # host numpy: as tensors, like the runners' outputs
            return torch.from_numpy(out.probs), torch.from_numpy(out.labels)

        return run

    eager = TorchExecutor(model, geometry, runtime.precision)
    found: dict[str, Any] = {"torch": executed(eager)}
    found["torch-cuda-graph"] = (
        executed(CudaGraphExecutor(eager, batch))
        if device == "cuda"
        else "CUDA graphs need a CUDA device"
    )
    for name, mode in (("compile", "default"), ("compile-autotune", "max-autotune-no-cudagraphs"),
                       ("compile-cudagraphs", "reduce-overhead")):  # fmt: skip
        if mode == "reduce-overhead" and device != "cuda":
            found[name] = "CUDA graphs need a CUDA device"
            continue
        compiled = torch.compile(graph_of(model, tile, margin, core, ds), mode=mode)
        found[name] = autocast_runner(compiled, device, dtype)
    try:
        import torch_tensorrt  # type: ignore[import-not-found]
    except ImportError as exc:
        found["tensorrt"] = f"torch-tensorrt does not import here ({exc})"
    else:
        if device != "cuda":
            found["tensorrt"] = "TensorRT needs a CUDA device"
        else:
            graph = graph_of(model, tile, margin, core, ds)
            precisions = {torch.float32} | ({dtype} if dtype is not None else set())

            def build(tiles: Any) -> Any:
                return torch_tensorrt.compile(
                    graph, ir="dynamo", inputs=[tiles], enabled_precisions=precisions
                )

            found["tensorrt"] = ("build", build, dtype)
    return found


def first_call(name: str, entry: Any, tiles: Any, device: str) -> tuple[Runner | None, str, float]:
    """Build (where the variant compiles) and call once; (runner, failure, seconds)."""
    t0 = time.perf_counter()
    try:
        runner = entry
        if isinstance(entry, tuple):  # TensorRT: built for these inputs, then run
            _, build, dtype = entry
            runner = autocast_runner(build(tiles), device, dtype)
        runner(tiles)
        synchronize(device)
    except Exception as exc:  # a compiler raises many kinds: the row says which
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        log(f"[gpu_runtimes] {name} failed: {type(exc).__name__}: {first}")
        return None, f"failed: {type(exc).__name__}: {first}", time.perf_counter() - t0
    return runner, "", time.perf_counter() - t0


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def rate(runner: Runner, batches: list[Any], device: str) -> float:
    """tiles/s over `batches`, the device synchronised before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    for b in batches:
        runner(b)
    synchronize(device)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def agreement(runner: Runner, reference: Outputs, real: Any, n: int) -> str:
    """The first `n` tiles' labels agreeing with the torch path's, and the largest uint8
    probability difference (`real`: the real tiles padded to the batch, as the engine pads)."""
    probs, labels = runner(real)
    labels, probs = labels[:n].cpu(), probs[:n].cpu()
    same = (labels == reference[1][:n].cpu()).double().mean().item()
    gap = int((probs.int() - reference[0][:n].cpu().int()).abs().max().item())
    detail = f"probabilities within {gap}/255" if gap else "probabilities identical"
    return f"labels {100 * same:.3f} % the torch path's on {n} real tiles, {detail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: demo)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20, help="batches per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.executors import opened
    from benchmarks.runtime import real_tiles
    from wsi_segment.models.bundle import demo_model_dir

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_runtimes.py: no CUDA device here; --device cpu for a dry run")
    bench = BenchRun.start("gpu_runtimes.py", argv)
    model_dir = args.model or demo_model_dir()
    model, runtime = opened(model_dir, args.device, "auto", "torch")
    tile = int(model.meta.tile_size)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, tile, tile, 3)
    batches = [
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(args.device)
        for _ in range(args.batches)
    ]
    # the real tiles padded with zero tiles to the batch, as the stager fills a short batch
    # (one shape: no variant compiles again for them)
    real = torch.from_numpy(real_tiles(tile)).permute(0, 2, 3, 1).contiguous()[: args.batch]
    n_real = len(real)
    real = torch.cat([real, real.new_zeros((args.batch - n_real, *real.shape[1:]))])
    real = real.to(args.device)
    found = variants(model, runtime, args.device, tile, MARGIN, CORE, DOWNSAMPLE, args.batch)

    runners: dict[str, Runner] = {}
    rows: list[tuple[str, str, str]] = []
    notes: dict[str, str] = {}
    for name, entry in found.items():
        if isinstance(entry, str):
            notes[name] = entry
            continue
        log(f"[gpu_runtimes] {name}: first call ...")
        runner, failure, seconds = first_call(name, entry, batches[0], args.device)
        notes[name] = failure or f"first call (compile) {seconds:.1f} s"
        if runner is not None:
            runners[name] = runner
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, runner in runners.items():
            rates[name].append(rate(runner, batches, args.device))
        log(f"[gpu_runtimes] round {r + 1} done")
    reference = runners["torch"](real)
    base = statistics.median(rates["torch"])
    for name in found:
        if name not in runners:
            rows.append((name, "-", notes[name]))
            continue
        figure = statistics.median(rates[name])
        check = agreement(runners[name], reference, real, n_real)
        rounds = ", ".join(f"{x:.0f}" for x in rates[name])
        rows.append((name, f"{figure:.0f} tiles/s",
                     f"x{figure / base:.2f} the torch path; rounds {rounds}; {notes[name]}; "
                     f"{check}"))  # fmt: skip
    dev = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (dry run)"
    bench.finish(
        rows,
        [
            f"device: {dev}; model: {model_dir.name if args.model else 'demo model'}; "
            f"precision {runtime.precision}, weights channels_last",
            f"batch {args.batch}, {args.batches} batches a round, {args.rounds} rounds, "
            f"uint8 NHWC tiles already on the device; geometry margin {MARGIN}, core {CORE}, "
            f"{DOWNSAMPLE} x {DOWNSAMPLE} means",
        ],
        not args.no_record,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
