"""Where the engine's writer spends its time, and how it scales with writer threads.

    python benchmarks/writer.py                        # 12288 px bank slide, 1, 2, 4 threads
    python benchmarks/writer.py --size 20480 --threads 1,2,4 --repeats 5 --no-record

The writer finishes every write unit (`SlideJob.finish_block`: stitch the reduced tile cores,
mask the tissue, write the zarr chunks the unit owns, count, trace polygons). A unit is a
chunk, or the chunks of one zarr chunk (8 x 8 tile cores) when chunks are smaller, as with
the CPU default of 4 x 4 tiles (`ChunkSpec.write_unit`, `unit_writer.write_units`). This
script feeds it the reduced tiles of the pipeline's own plan of a bank slide, with no model
and no decoders in the measurement, so the figures are the writer's alone:

- **labels and probabilities from the demo model**: its real tile graph's outputs for
  every tissue tile of the slide, computed once (CPU, fp32) and cached beside the slide. Region
  sizes are what a trained model gives on this slide, not a synthetic pattern; polygon tracing
  costs in proportion to region edges, and random labels would make it ~60x dearer.
- **parts**: stitch (cores into the block), tissue (mask sampled, outside zeroed), zarr write
  (compression included, a fresh store each repeat), statistics (counts, probability sums),
  polygons (rasterio tracing, simplification per chunk, WKB); `finish_block` is the whole,
  measured as such.
- **threads**: the same parts, and `finish_block`, over all units with 1, 2, 4 threads of a
  plain pool (a part whose rate grows with threads releases the GIL; one that stays flat
  holds it, given free cores), and the engine's own writer (`UnitWriter.run` with that many
  finisher threads) fed the tiles in batches that span chunks, as the compute stage sends them.
  And the engine's writer with N polygon processes (`--polygon-processes`, the GPU default):
  each finisher thread hands its unit's polygons to an idle process and waits.

Profile (py-spy, all threads; `--gil` keeps only samples holding the GIL):

    py-spy record --format raw [--gil] -r 200 -o p.txt -- python benchmarks/writer.py --loop 30
    python benchmarks/writer.py --attribute p.txt     # seconds per part, from the samples

Each figure is the median of `--repeats` rounds; within a round every variant runs back to
back, so ratios are taken in one run. The table is appended to RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.engine_proxy import bench_geometry, engine_job, torch_fp32_spec  # noqa: E402
from benchmarks.measure import BenchRun, loadavg, log, slide_args  # noqa: E402
from benchmarks.stages import slide_and_model  # noqa: E402

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.slide_job import ReducedTiles, SlideJob
    from wsi_segment.wsi.tiling import ChunkSpec

PARTS = ("stitch", "tissue", "zarr write", "statistics", "polygons")
WRITER = "engine writer (UnitWriter, N finisher threads)"
PROCESSES = "engine writer, N finisher threads + N polygon processes (the GPU default)"


def model_tiles(
    job: SlideJob, specs: list[ChunkSpec], cache: Path, batch: int
) -> list[ReducedTiles]:
    """Each chunk's `ReducedTiles` from the real model in batches of `batch` (cached: the
    model is not measured)."""
    from wsi_segment.pipeline.inference.slide_job import ReducedTiles

    if not cache.exists():
        t0 = time.perf_counter()
        from tests.reference_inference import chunk_alone

        reduced = [chunk_alone(job, s, batch) for s in specs]
        tmp = cache.with_name(cache.stem + ".partial.npz")
        np.savez(
            tmp,
            probs=np.concatenate([r.probs for r in reduced if len(r.probs)]),
            labels=np.concatenate([r.labels for r in reduced if len(r.labels)]),
            nbytes=np.array([r.bytes_from_model for r in reduced]),
        )
        tmp.rename(cache)
        log(f"model outputs for {sum(len(s.tiles) for s in specs)} tiles: "
            f"{time.perf_counter() - t0:.1f} s (cached in {cache})")  # fmt: skip
    data = np.load(cache)
    probs, labels, nbytes = data["probs"], data["labels"], data["nbytes"]
    out, pos = [], 0
    for s, nb in zip(specs, nbytes, strict=True):
        n = len(s.tiles)
        out.append(ReducedTiles(probs[pos : pos + n], labels[pos : pos + n], int(nb)))
        pos += n
    if pos != len(probs):
        raise RuntimeError(f"{cache}: cached tiles do not match the plan; delete it")
    return out


def unit_tiles(
    specs: list[ChunkSpec], reduced: list[ReducedTiles]
) -> tuple[list[ChunkSpec], list[ReducedTiles]]:
    """The write units of the plan (as the engine's writer finishes them) and each unit's
    `ReducedTiles`: its chunks' tiles, in the unit's order."""
    from wsi_segment.pipeline.inference.slide_job import ReducedTiles
    from wsi_segment.pipeline.inference.unit_writer import write_units

    units, out = write_units(specs), []
    for unit in units:
        parts = [reduced[i] for i in unit.starts]
        out.append(
            ReducedTiles(
                np.concatenate([p.probs for p in parts]),
                np.concatenate([p.labels for p in parts]),
                sum(p.bytes_from_model for p in parts),
            )
        )
    return [u.spec for u in units], out


def part_functions(
    job: SlideJob, specs: list[ChunkSpec], reduced: list[ReducedTiles]
) -> dict[str, Callable[[int], object]]:
    """One callable per part, taking a write unit's index (`specs`, `reduced`: the units');
    inputs of later parts made up front."""
    from wsi_segment.models.labels import NODATA
    from wsi_segment.pipeline.inference.slide_job import stitch_cores
    from wsi_segment.pipeline.outputs.chunk_summary import block_polygons, block_statistics

    grid = job.grid
    blocks = [job.stitch_block(s, r) for s, r in zip(specs, reduced, strict=True)]

    def stitch(i: int) -> object:
        s, r = specs[i], reduced[i]
        tiles = list(s.tiles)
        return (
            stitch_cores(r.probs, tiles, s.core_box, grid, fill=0),
            stitch_cores(r.labels, tiles, s.core_box, grid, fill=NODATA),
        )

    def tissue(i: int) -> object:
        probs, labels = blocks[i].probs.copy(), blocks[i].labels.copy()
        inside = job.tissue_block(specs[i].out_box)
        probs[:, ~inside] = 0
        labels[~inside] = NODATA
        return probs

    def write(i: int) -> object:
        ox0, oy0, ox1, oy1 = specs[i].out_box
        job._array()[:, oy0:oy1, ox0:ox1] = blocks[i].probs
        return None

    def stats(i: int) -> object:
        return block_statistics(blocks[i].labels, blocks[i].probs, job.n_classes)

    def polygons(i: int) -> object:
        labels = blocks[i].labels  # traced with the block as one cell (cell 0)
        return block_polygons(specs[i], labels, job.n_classes, job.simplify_tolerance, 0)

    def finish(i: int) -> object:
        return job.finish_block(specs[i], reduced[i], polygons=None)  # in this thread

    return dict(zip((*PARTS, "finish_block (all)"), (stitch, tissue, write, stats, polygons, finish), strict=True))  # fmt: skip


class WriterRun(Protocol):
    """`engine_writer`'s measurement: seconds with `threads` finishers and `tracers`
    polygon processes (0: each finisher traces in its thread)."""

    def __call__(self, threads: int, tracers: int = 0) -> float: ...


def engine_writer(
    job: SlideJob, specs: list[ChunkSpec], reduced: list[ReducedTiles], batch: int
) -> WriterRun:
    """Seconds for the engine's own writer (`UnitWriter.run`, `threads` finishers) to take
    every chunk's tiles in batches of `batch` that span chunks, as the compute stage sends them
    (`specs`, `reduced`: the chunks'; the writer gathers them into write units)."""
    import queue

    from wsi_segment.pipeline.inference.engine_state import FirstError
    from wsi_segment.pipeline.inference.unit_writer import TileBatch, UnitWriter
    from wsi_segment.pipeline.progress import NullProgress

    probs = np.concatenate([r.probs for r in reduced if len(r.probs)])
    labels = np.concatenate([r.labels for r in reduced if len(r.labels)])
    owner = [(i, t) for i, s in enumerate(specs) for t in range(len(s.tiles))]
    per_tile = reduced[0].bytes_from_model // max(1, len(specs[0].tiles))
    batches = []
    for start in range(0, len(owner), batch):
        segments: list[tuple[int, int, int]] = []
        for index, tile in owner[start : start + batch]:
            if segments and segments[-1][0] == index:
                segments[-1] = (index, segments[-1][1], segments[-1][2] + 1)
            else:
                segments.append((index, tile, 1))
        end = start + len(owner[start : start + batch])
        batches.append(TileBatch(segments, probs[start:end], labels[start:end], per_tile))

    def run(threads: int, tracers: int = 0) -> float:
        from wsi_segment.pipeline.inference.polygon_processes import PolygonProcesses

        inbox: queue.Queue[TileBatch | None] = queue.Queue()
        for b in batches:
            inbox.put(b)
        inbox.put(None)
        pool = PolygonProcesses(tracers) if tracers else None
        try:
            polygons = pool.block_polygons if pool is not None else None
            if pool is not None:  # started and warmed before the clock starts
                warm = job.stitch_block(specs[0], reduced[0]).labels
                with ThreadPoolExecutor(tracers) as threads_:
                    list(threads_.map(lambda _: pool.block_polygons(
                        specs[0], warm, job.n_classes, 0.0, 0), range(tracers)))  # fmt: skip
            writer = UnitWriter(job, specs, NullProgress(), threads, polygons)
            errors = FirstError()
            t0 = time.perf_counter()
            writer.run(inbox, errors)
            if errors.error is not None:
                raise errors.error
            writer.results()
            return time.perf_counter() - t0
        finally:
            if pool is not None:
                pool.close()

    return run


def fresh_store(job: SlideJob, store: Path) -> SlideJob:
    """`job` writing into a copy of its (still empty) store at `store`."""
    import dataclasses
    import shutil
    import threading

    from wsi_segment.pipeline.outputs.label_image import label_level0_path
    from wsi_segment.pipeline.outputs.ome_zarr import level0_path

    shutil.copytree(Path(job.zarr_path).parents[1], store)  # the root above image "0/0"
    return dataclasses.replace(
        job,
        zarr_path=str(level0_path(store)),
        labels_path=str(label_level0_path(store)),
        _local=threading.local(),
    )


def timed(fn: Callable[[int], object], chunks: int, threads: int) -> float:
    """Seconds to run `fn` on every write unit with `threads` threads (1: in this thread)."""
    t0 = time.perf_counter()
    if threads == 1:
        for i in range(chunks):
            fn(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, range(chunks)))
    return time.perf_counter() - t0


def polygon_stats(
    job: SlideJob, specs: list[ChunkSpec], reduced: list[ReducedTiles]
) -> tuple[float, float]:
    """Polygons and vertices per tile: how much edge the labels carry (tracing's cost)."""
    import shapely

    from wsi_segment.pipeline.outputs.chunk_summary import block_polygons

    polys = verts = 0
    for s, r in zip(specs, reduced, strict=True):
        wkb = block_polygons(s, job.stitch_block(s, r).labels, job.n_classes, 0.0, 0)  # exact
        geoms = [shapely.from_wkb(w) for ws in wkb.values() for w in ws]
        polys += len(geoms)
        verts += int(sum(shapely.get_num_coordinates(geoms))) if geoms else 0
    tiles = max(1, sum(len(s.tiles) for s in specs))
    return polys / tiles, verts / tiles


# py-spy frames -> the writer's parts (the last match in a stack wins)
FRAMES = (
    ("SlideJob.stitch_block", "stitch + tissue"),
    ("Array.__setitem__", "zarr write, calling thread"),
    ("block_statistics", "statistics"),
    ("block_polygons", "polygons"),
    ("BaseEventLoop.run_forever", "zarr write, zarr's event loop thread"),
    ("_WorkItem.run", "zarr write, worker threads (compression, files)"),
)


def attribute(raw: Path, hz: float) -> list[tuple[str, float]]:
    """Seconds per part in a py-spy raw profile of `--loop` (idle waits left out)."""
    seconds: dict[str, float] = {}
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        if "thread.py:81" in frames[-1] or "select" in frames[-1]:
            continue  # a pool thread or the event loop waiting for work
        part = "other (set-up: slide, tissue, plan)"
        for frame in frames:
            for key, name in FRAMES:
                if frame.startswith(key):
                    part = name
        seconds[part] = seconds.get(part, 0.0) + int(count) / hz
    return sorted(seconds.items(), key=lambda kv: -kv[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    slide_args(ap, 12288)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--chunk-tiles", type=int, default=4, help="the CPU default: 4 chunks a unit")
    ap.add_argument("--downsample", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64, help="tiles per batch to the writer")
    ap.add_argument("--loop", type=int, default=0, help="only run finish_block N rounds")
    ap.add_argument("--attribute", type=Path, default=None, help="py-spy raw file to split")
    ap.add_argument("--hz", type=float, default=200.0, help="py-spy's rate (-r)")
    args = ap.parse_args(argv)
    if args.attribute is not None:
        for part, sec in attribute(args.attribute, args.hz):
            print(f"{sec:8.2f} s  {part}")
        return 0
    counts = [int(x) for x in args.threads.split(",") if x]
    bench = BenchRun.start("writer.py", argv)
    slide, writer, model_dir, model_desc = slide_and_model(
        args.work, args.size, args.tissue, args.model
    )
    from wsi_segment.pipeline.inference.model_handle import ModelHandle

    handle = ModelHandle(str(model_dir), "cpu", torch_fp32_spec(bench_geometry(model_dir, args)))
    # the cached tiles are in plan order, which the chunk size changes
    name = f"writer-{slide.stem}-{Path(model_dir).name}-d{args.downsample}-c{args.chunk_tiles}"
    cache = args.work / f"{name}.npz"
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        job, specs = engine_job(slide, model_dir, args, Path(tmp) / "p0.zarr", handle)
        reduced = model_tiles(job, specs, cache, args.batch_size)
        units, unit_reduced = unit_tiles(specs, reduced)
        tiles = sum(len(s.tiles) for s in specs)
        per_poly, per_vert = polygon_stats(job, units, unit_reduced)
        fns = part_functions(job, units, unit_reduced)
        if args.loop:
            t1 = time.perf_counter()
            for _ in range(args.loop):
                timed(fns["finish_block (all)"], len(units), 1)
            log(f"finish_block: {args.loop * tiles / (time.perf_counter() - t1):,.0f} tiles/s")
            return 0
        seconds: dict[tuple[str, int], list[float]] = {}
        for rep in range(args.repeats):
            for n in counts:
                # a fresh store per round and thread count: writes never overwrite warm files
                fresh = fresh_store(job, Path(tmp) / f"p{rep}-{n}.zarr")
                fns = part_functions(fresh, units, unit_reduced)
                for part, fn in fns.items():
                    seconds.setdefault((part, n), []).append(timed(fn, len(units), n))
                writer_job = fresh_store(job, Path(tmp) / f"w{rep}-{n}.zarr")
                run = engine_writer(writer_job, specs, reduced, args.batch_size)
                seconds.setdefault((WRITER, n), []).append(run(n))
                traced_job = fresh_store(job, Path(tmp) / f"t{rep}-{n}.zarr")
                run = engine_writer(traced_job, specs, reduced, args.batch_size)
                seconds.setdefault((PROCESSES, n), []).append(run(n, n))
            log(f"round {rep + 1}/{args.repeats} done, load {loadavg()}")
    for name in (*fns, WRITER, PROCESSES):
        med = {n: statistics.median(seconds[(name, n)]) for n in counts}
        base = med[counts[0]]
        figures = ", ".join(
            f"{n} thr {tiles / med[n]:,.0f} tiles/s (x{base / med[n]:.2f})" for n in counts
        )
        spread = "; ".join(
            f"{n} thr {min(seconds[(name, n)]):.3f}-{max(seconds[(name, n)]):.3f} s" for n in counts
        )
        rows.append((name, f"{tiles / base:,.0f} tiles/s", f"{figures}; range {spread}"))
    notes = [
        f"slide: {slide.name} ({writer}); {len(specs)} chunks of {args.chunk_tiles} x "
        f"{args.chunk_tiles} tiles in {len(units)} write units, {tiles} tissue tiles; model "
        f"outputs: {model_desc}, CPU fp32, cached in {cache.name}",
        f"labels carry {per_poly:.1f} polygons and {per_vert:.0f} vertices per tile (edges: what "
        "tracing costs)",
        f"figure: {counts[0]} thread(s); details: tiles/s with {args.threads} threads and the "
        f"speed-up over {counts[0]}; median of {args.repeats} rounds",
    ]
    bench.finish(rows, notes, not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
