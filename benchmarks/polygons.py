"""The polygons' cost in the writer and at the end of a run, simplified slide-wide (before)
or in the writer per zarr chunk (now).

    python benchmarks/polygons.py --size 20480 --repeats 3

The chunks' labels are the demo model's real outputs on the bank slide (the cache of
benchmarks/writer.py, made once; no model in the measurement), stitched as the writer does.
Two ways, both single-threaded so the figures are CPU time:

- **slide-wide** (what runs did before): the writer traces exact polygons per chunk
  (`block_polygons`, tolerance 0); the end unions them (`merge_class_polygons`) and
  simplifies the slide's coverage (`simplify_coverage`).
- **per zarr chunk** (what runs do now, in `finish_block`): the writer traces
  and simplifies each zarr chunk's square (`SlideJob.polygon_cell`, 8 x 8 tile cores) with
  its border fixed (`block_polygons` with the tolerance and `cell`), so the pieces do not
  depend on the chunk size; the end only unions them (`merge_simplified_polygons`) and drops collinear vertices
  (`drop_collinear_vertices`).

Each figure is the median of `--repeats` rounds. Printed, not recorded: copy the table into
RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.engine_proxy import bench_geometry, engine_job, torch_fp32_spec  # noqa: E402
from benchmarks.measure import loadavg, log  # noqa: E402
from benchmarks.stages import slide_and_model  # noqa: E402
from benchmarks.writer import model_tiles  # noqa: E402


def seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of `fn` over `repeats` calls, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    import shapely

    from wsi_segment.pipeline.inference.model_handle import ModelHandle
    from wsi_segment.pipeline.outputs.chunk_summary import block_polygons
    from wsi_segment.pipeline.outputs.polygon_merge import (
        drop_collinear_vertices,
        merge_class_polygons,
        merge_simplified_polygons,
        simplify_coverage,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20480, help="bank slide side (px)")
    ap.add_argument("--tissue", type=float, default=0.6)
    ap.add_argument("--tolerance", type=float, default=1.0, help="output px")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench"))
    args = ap.parse_args(argv)
    args.overlap, args.chunk_tiles, args.downsample, args.batch_size = 32, 8, 4, 64
    slide, _, model_dir, model_desc = slide_and_model(args.work, args.size, args.tissue, None)
    handle = ModelHandle(str(model_dir), "cpu", torch_fp32_spec(bench_geometry(model_dir, args)))
    cache = args.work / f"writer-{slide.stem}-{Path(model_dir).name}-d{args.downsample}.npz"
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        job, specs = engine_job(slide, model_dir, args, Path(tmp) / "p0.zarr", handle)
        reduced = model_tiles(job, specs, cache, args.batch_size)
        labels = [job.stitch_block(s, r).labels for s, r in zip(specs, reduced, strict=True)]
    k, tol, n = job.n_classes, args.tolerance, args.repeats

    def writer(tolerance: float, cell: int) -> Callable[[], list[dict[int, list[bytes]]]]:
        pairs = list(zip(specs, labels, strict=True))
        return lambda: [block_polygons(s, lab, k, tolerance, cell) for s, lab in pairs]

    def decoded(wkb: list[dict[int, list[bytes]]]) -> list[dict[int, Any]]:
        return [{c: list(shapely.from_wkb(ws)) for c, ws in o.items()} for o in wkb]

    w_exact, exact = seconds(writer(0.0, 0), n)
    w_simple, simple = seconds(writer(tol, job.polygon_cell), n)
    f_old, old = seconds(lambda: simplify_coverage(merge_class_polygons(decoded(exact)), tol), n)
    f_new, new = seconds(
        lambda: drop_collinear_vertices(merge_simplified_polygons(decoded(simple))), n
    )
    merged = merge_class_polygons(decoded(exact))

    def vertices(geoms: dict[int, Any]) -> int:
        return int(sum(shapely.get_num_coordinates(g) for g in geoms.values()))

    tiles = sum(len(s.tiles) for s in specs)
    print(f"slide {slide.name}: {len(specs)} chunks, {tiles} tissue tiles; {model_desc}; "
          f"tolerance {tol} output px; median of {n}; load {loadavg()}")  # fmt: skip
    print("| | slide-wide simplify | per-zarr-chunk simplify |")
    print("|---|---|---|")
    print(f"| writer: polygons of all chunks (1 thread) | {w_exact:.2f} s | {w_simple:.2f} s |")
    print(f"| end of the run: merge (+ simplify) | {f_old:.2f} s | {f_new:.2f} s |")
    print(f"| vertices in the GeoJSON (exact: {vertices(merged)}) | {vertices(old)} "
          f"| {vertices(new)} |")  # fmt: skip
    for c in sorted(merged):
        exact_area = merged[c].area
        log(f"class {c}: area exact {exact_area:.0f}, slide-wide {old[c].area:.0f}, "
            f"per zarr chunk {new[c].area:.0f} output px^2")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
