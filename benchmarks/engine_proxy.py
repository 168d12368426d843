"""CPU proxy of the engine: its overhead with an instant model, no GPU needed.

    python benchmarks/engine_proxy.py                    # 12288 px bank slide, 1 and 2 decoders
    python benchmarks/engine_proxy.py --size 12288 --decoders 1,2,4 --no-record

The engine (`wsi_segment.pipeline.inference.engine.run_engine`: decoder processes ->
shared-memory slots -> compute stage -> writer) runs the pipeline's own plan of a bank slide
with an executor whose `run` costs next to nothing (block means of the tile's core:
the right shapes and dtypes, region-like label maps, no network), so the figure is what the engine's reading,
hand-over, stitching and writing can deliver. It is compared with the decode limit of the
same decoders measured alone (`benchmarks/decode.py`: one spawned process reading its share):

    ratio = engine tiles/s / (decoders x single-decoder tiles/s)     goal >= 0.8 on 2 cores

The ratio uses the engine's rate after its first decoded chunk (the start-up, spawning and
importing the decoders, is reported apart: it overlaps the model load in a real run). Bytes per tile from the device are those of the instant model's outputs,
which have the shapes of the real model's. The table is appended to RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.decode import run_processes  # noqa: E402
from benchmarks.measure import BenchRun, slide_args  # noqa: E402
from benchmarks.stages import slide_and_model  # noqa: E402

if TYPE_CHECKING:
    from wsi_segment.models.runtimes.spec import RuntimeSpec
    from wsi_segment.models.runtimes.tile_io import Executor, Geometry, ReducedOutputs, Tiles
    from wsi_segment.pipeline.inference.slide_job import SlideJob
    from wsi_segment.wsi.tiling import ChunkSpec

CLASSES = 4
BLOCK = 8  # output pixels per label block of the instant model


class InstantModel:
    """An executor (models.runtimes.executor) that costs ~nothing: its classes
    are the colour channels of the tile's core, sampled once per block of BLOCK output pixels.

    Blocks, not single pixels: a real model's label map is made of regions, and the writer's
    polygon tracing costs in proportion to the regions' edges (a per-pixel label map is about
    60x dearer to trace than a real one on CMU-1-Small-Region, 8-pixel blocks about as dear)."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry

    def run(self, tiles: Tiles) -> ReducedOutputs:
        import torch

        from wsi_segment.models.runtimes.tile_io import ReducedOutputs

        g = self.geometry
        margin, core, downsample = g.margin, g.core, g.downsample
        tiles = torch.as_tensor(tiles).permute(0, 3, 1, 2)  # the engine's host batch: numpy
        step, so = BLOCK * downsample, core // downsample
        # one pixel per block (textures are smooth at this scale), spread over the block
        seeds = tiles[:, [0, 1, 2, 0], margin : margin + core : step, margin : margin + core : step]
        seed_labels = seeds.argmax(dim=1).to(torch.uint8)  # argmax on the seeds, not the spread
        probs = spread(seeds, BLOCK)[..., :so, :so]
        labels = spread(seed_labels[:, None], BLOCK)[:, 0, :so, :so]
        return ReducedOutputs(
            probs.contiguous().numpy(), labels.contiguous().numpy(), np.zeros((len(tiles), CLASSES))
        )


def bench_geometry(model_dir: Path, args: argparse.Namespace) -> Geometry:
    """The tile graph's geometry of a benchmark's run of the model in `model_dir` at its
    `--overlap` and `--downsample` (gate on, as the pipeline's default)."""
    from wsi_segment.models.meta import read_model_json
    from wsi_segment.pipeline.inference.tile_reader import tile_geometry
    from wsi_segment.wsi.tiling import TileGrid

    _, meta = read_model_json(model_dir)
    return tile_geometry(TileGrid(int(meta.tile_size), args.overlap, args.downsample), True)


def torch_fp32_spec(geometry: Geometry) -> RuntimeSpec:
    """The runtime spec the benchmarks' CPU handles carry: what a plan for
    `--device cpu --runtime torch --precision fp32` on this machine hands the loader, for
    tiles of `geometry`."""
    from wsi_segment.pipeline.machine import probe_machine
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.run_policy import RunFacts, decide, runtime_spec

    options = SegmentParams(device="cpu", runtime="torch", precision="fp32")
    return runtime_spec(decide(probe_machine(), options, RunFacts()), geometry)


def instant_handle(geometry: Geometry) -> Any:
    """A model handle whose executors are `InstantModel`s, on the CPU."""
    import types

    import torch

    from wsi_segment.pipeline.inference.model_handle import LoadedModel, ModelHandle

    class InstantLoaded(LoadedModel):
        def executor(self, geometry: Geometry, batch: int, thread_cores: int | None) -> Executor:
            return InstantModel(geometry)

    model = types.SimpleNamespace(device=torch.device("cpu"), identity="instant")
    runtime = types.SimpleNamespace(network=None)  # not torch's: the CPU
    loaded = InstantLoaded(model, runtime)  # type: ignore[arg-type]
    return ModelHandle.of(loaded, "instant", "cpu", torch_fp32_spec(geometry))


def spread(x: Any, block: int) -> Any:
    """Repeat each pixel of (N, C, h, w) over a block x block square: (N, C, h*block, w*block)."""
    n, c, h, w = x.shape
    return (
        x[:, :, :, None, :, None]
        .expand(n, c, h, block, w, block)
        .reshape(n, c, h * block, w * block)
    )


def engine_job(
    slide: Path, model_dir: Path, args: argparse.Namespace, store: Path, handle: Any = None
) -> tuple[SlideJob, list[ChunkSpec]]:
    """A SlideJob over the pipeline's plan of `slide`, writing into a fresh zarr `store`;
    its model is `handle` (a ModelHandle), by default the instant model."""
    from benchmarks.stages import plan_like_pipeline
    from wsi_segment.models.meta import read_model_json
    from wsi_segment.pipeline.inference.slide_job import SlideJob
    from wsi_segment.pipeline.inference.tile_reader import TileReader
    from wsi_segment.pipeline.outputs.chunk_summary import output_extent
    from wsi_segment.pipeline.outputs.label_image import create_label_image, label_level0_path
    from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store, level0_path
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.wsi.tiling import STORE_TILES
    from wsi_segment.wsi.tissue import detect_tissue

    _, meta = read_model_json(model_dir)
    p = plan_like_pipeline(slide, meta, args.overlap, args.chunk_tiles, args.downsample)
    tissue = detect_tissue(p.slide)
    per_output = p.level0_per_model * p.grid.downsample
    out_h = max(s.write_unit()[1][3] for s in p.specs)  # what the writer writes
    out_w = max(s.write_unit()[1][2] for s in p.specs)
    chunk_out = STORE_TILES * p.grid.stride // p.grid.downsample
    names = [f"c{k}" for k in range(CLASSES)]
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    create_probability_store(
        store, names, colours, (out_h, out_w), (chunk_out,) * 2, 1.0, per_output
    )
    create_label_image(store)
    job = SlideJob(
        reader=TileReader(
            slide_path=str(slide),
            backend="auto",
            mpp_override=None,
            level0_per_model=p.level0_per_model,
            read_level=p.read_level,
            grid=p.grid,
            read_backend=getattr(p.slide, "backend", None),
        ),
        n_classes=CLASSES,
        gate=True,
        zarr_path=str(level0_path(store)),
        labels_path=str(label_level0_path(store)),
        tissue_mask=tissue.mask,
        tissue_downsample=float(tissue.downsample),
        level0_per_output=per_output,
        model=handle or instant_handle(bench_geometry(model_dir, args)),
        # a run's polygons with the default options, no `--roi`
        simplify_tolerance=SegmentParams().simplify_tolerance,
        keep_exact_polygons=False,
        slide_extent_out=output_extent(p.slide.dimensions, per_output),
    )
    return job, p.specs


def run_engine_once(slide: Path, model_dir: Path, args: argparse.Namespace, n: int) -> Any:
    from wsi_segment.pipeline.inference.engine import EngineSizes, build_executor, run_engine
    from wsi_segment.pipeline.inference.engine_state import EngineStats
    from wsi_segment.pipeline.inference.read_sources import DecoderProcesses
    from wsi_segment.pipeline.machine import probe_machine, usable_cores
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.run_policy import RunFacts, decide

    # the writers a run with n decoders gets on this machine (the run policy's)
    writers = decide(probe_machine(), SegmentParams(decoders=n), RunFacts()).writers.value
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        job, specs = engine_job(slide, model_dir, args, Path(tmp) / "p.zarr")
        stats = EngineStats()
        t0 = time.perf_counter()
        sizes = EngineSizes(
            cores=usable_cores(),
            writers=writers,
            computes=1,
            locked=True,
            polygon_processes=0,
            batch=args.batch_size,
        )
        executor = build_executor(job.model, job.geometry, sizes)
        outcomes = run_engine(job, specs, DecoderProcesses(n), executor, sizes, stats)
        wall = time.perf_counter() - t0
        return stats, sum(o.bytes_from_model for o in outcomes), wall, stats.first_chunk_at - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    slide_args(ap, 12288)
    ap.add_argument("--decoders", default="1,2")
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--chunk-tiles", type=int, default=8)
    ap.add_argument("--downsample", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.decoders.split(",") if x]
    bench = BenchRun.start("engine_proxy.py", argv)
    slide, writer, model_dir, model_desc = slide_and_model(
        args.work, args.size, args.tissue, args.model
    )
    decode_job = {
        "slide": str(slide),
        "model": str(model_dir),
        "overlap": args.overlap,
        "chunk_tiles": args.chunk_tiles,
        "downsample": args.downsample,
    }
    tiles, wall = run_processes(decode_job, 1)
    single = tiles / wall
    rows = [("decode, 1 process (alone)", f"{single:,.0f} tiles/s", f"{tiles} tiles")]
    print(rows[-1], file=sys.stderr, flush=True)
    for n in counts:
        stats, from_model, wall, first_chunk_s = run_engine_once(slide, model_dir, args, n)
        rate = stats.tiles / wall
        steady = stats.tiles / max(1e-9, wall - first_chunk_s)
        ratio = steady / (n * single)
        per_tile = from_model / max(1, stats.tiles)
        spans = sum(c > 1 for c in stats.chunks_per_batch)
        rows.append((f"engine, {n} decoders, instant model", f"{rate:,.0f} tiles/s",
                     f"{steady:,.0f} tiles/s after the first chunk: ratio={ratio:.2f} (goal "
                     f">= 0.8); start-up {first_chunk_s:.2f} s; {per_tile:,.0f} B/tile from the device; "
                     f"{len(stats.chunks_per_batch)} batches of {stats.batch_size}, {spans} "
                     f"spanning chunks; {stats.slots} slots; {wall:.2f} s"))  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    notes = [
        f"slide: {slide.name} ({writer}), model geometry: {model_desc}",
        "CPU proxy of the engine (no GPU): an instant model, so the engine's own "
        "reading, hand-over, stitching and writing bound it; ratio from the first decoded chunk on",
    ]
    bench.finish(rows, notes, not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
