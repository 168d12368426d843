"""Section `engine` of benchmarks/throughput.py: the engine's two CPU read sources, the
reader thread (the CPU default, fed by the prefetch thread) against one decoder process,
measured in one run. (Until 2026-11-24 it compared the reader thread with `run_chunks`, the
per-chunk Dask path the engine replaced: RESULTS.md holds those runs.)

    python benchmarks/throughput.py --only engine --size 20480 --fast --reps 3

One `prepare` of the slide (the CLI's settings, model loaded once), then the inference
stage alone, `--reps` times per source, interleaved (decoders, reader, decoders, reader, ...)
so a machine shared with other work loads both alike. Each run writes a fresh store; the
reader thread starts its own prefetch thread at the clock's start, as `infer` hands one to
it. The row gives the medians, min-max, tiles/s, the process's CPU time per tile of each run
(steadier than wall time on a shared machine) and the ratio reader thread / decoders of
medians (and of each interleaved pair); the zarr bytes of each source's runs are compared,
and the two sources' first stores with each other.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.measure import loadavg, log
from benchmarks.slides import make_slide

DECODERS, READER = "engine (1 decoder process)", "engine (reader thread)"


def _digest(store: Path) -> str:
    """sha256 over every file of the store, in path order (the bytes a run wrote)."""
    h = hashlib.sha256()
    for f in sorted(p for p in store.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(store)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _difference(a: Path, b: Path) -> str:
    """How two runs' stores differ: identical, or the largest probability difference (of
    255) and the share of labelled pixels whose class differs."""
    import numpy as np
    import zarr

    from wsi_segment.pipeline.outputs.label_image import label_level0_path
    from wsi_segment.pipeline.outputs.ome_zarr import level0_path

    if _digest(a) == _digest(b):
        return "identical bytes"
    pa = np.asarray(zarr.open_array(str(level0_path(a)), mode="r")[:]).astype(np.int16)
    pb = np.asarray(zarr.open_array(str(level0_path(b)), mode="r")[:]).astype(np.int16)
    la = np.asarray(zarr.open_array(str(label_level0_path(a)), mode="r")[:])
    lb = np.asarray(zarr.open_array(str(label_level0_path(b)), mode="r")[:])
    labelled = (la > 0) | (lb > 0)
    changed = float(np.mean(la[labelled] != lb[labelled])) if labelled.any() else 0.0
    return (
        f"probabilities differ by at most {int(np.abs(pa - pb).max())}/255, "
        f"{100 * changed:.3f}% of labelled pixels change class"
    )


def _runners(prep: Any, threads: int) -> dict[str, Callable[[Any], dict[str, Any]]]:
    from wsi_segment.pipeline.infer_stage import local_run
    from wsi_segment.pipeline.inference.engine import (
        EngineSizes,
        ReadSource,
        build_executor,
        run_engine,
    )
    from wsi_segment.pipeline.inference.engine_state import EngineStats
    from wsi_segment.pipeline.inference.host_tiles import HostTiles
    from wsi_segment.pipeline.inference.read_sources import DecoderProcesses, ReaderThread
    from wsi_segment.pipeline.machine import usable_cores

    def engine(job: Any, source: ReadSource) -> dict[str, Any]:
        stats = EngineStats()
        policy, _executor = local_run(prep)  # the writers and the batch of a run on this machine
        sizes = EngineSizes(
            cores=usable_cores(),
            writers=policy.writers.value,
            computes=threads,
            locked=True,
            polygon_processes=0,
            batch=policy.batch_size.value,
        )
        executor = build_executor(job.model, job.geometry, sizes)
        run_engine(job, prep.specs, source, executor, sizes, stats)
        batches = stats.chunks_per_batch
        return {"batches": len(batches), "computes": stats.computes, "writers": stats.writers}

    def decoders(job: Any) -> dict[str, Any]:
        return engine(job, DecoderProcesses(1))

    def reader(job: Any) -> dict[str, Any]:
        return engine(job, ReaderThread(HostTiles(job.reader)))

    return {DECODERS: decoders, READER: reader}


def section_engine(
    args: argparse.Namespace, work: Path, model_dir: Path, rows: list, notes: list
) -> float:
    """Inference stage of the engine's two CPU read sources, interleaved; returns reader
    thread / decoders."""
    from wsi_segment.pipeline.infer_stage import create_stores, slide_job
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.prepare import prepare

    size = args.size or 12288
    slide, writer = make_slide(
        work / "slides" / f"tp-{size}-t{args.tissue:g}.svs", size, args.tissue, fast=args.fast
    )
    notes.append(f"engine slide: {size} x {size} px, mpp 0.5, tissue {args.tissue:g} ({writer})")
    params = SegmentParams(
        model_dir=model_dir,
        batch_size=args.batch_size,
        overlap=args.overlap,
        threads=args.threads,
        backend=args.backend,
        precision=args.precision,
        device="cpu",
    )
    load_before = loadavg()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        prep = prepare(slide, tmp, params)
        try:
            n = prep.tiles_total
            runners = _runners(prep, args.threads)
            walls: dict[str, list[float]] = {k: [] for k in runners}
            cpus: dict[str, list[float]] = {k: [] for k in runners}
            extra: dict[str, dict[str, Any]] = {}
            digests: dict[str, set[str]] = {k: set() for k in runners}
            first: dict[str, Path] = {}
            for rep in range(args.reps):
                for k, (name, run) in enumerate(runners.items()):
                    store = Path(tmp) / f"{rep}-{k}.zarr"
                    create_stores(prep, store)
                    job = slide_job(prep, store)
                    c0, t0 = os.times(), time.perf_counter()
                    extra[name] = run(job)
                    walls[name].append(time.perf_counter() - t0)
                    c1 = os.times()
                    cpus[name].append(c1.user - c0.user + c1.system - c0.system)
                    digests[name].add(_digest(store))
                    first.setdefault(name, store)
                    log(f"[engine] rep {rep + 1}: {name} {walls[name][-1]:.1f} s")
            across = _difference(*first.values())
        finally:
            prep.slide.close()
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratio = med[DECODERS] / med[READER]
    pairs = ", ".join(f"{c / e:.2f}" for c, e in zip(walls[DECODERS], walls[READER], strict=True))
    for name, v in walls.items():
        rows.append(
            (
                f"engine: {name}",
                f"{n / med[name]:.1f} tiles/s",
                f"{n} tiles; inference stage median {med[name]:.1f} s, min-max "
                f"{min(v):.1f}-{max(v):.1f} s over {len(v)} runs ({', '.join(f'{w:.1f}' for w in v)}); "
                f"cpu-ms/tile {', '.join(f'{1000 * c / n:.1f}' for c in cpus[name])}"
                + (f"; {extra[name]}" if extra.get(name) else ""),
            )
        )
    rows.append(
        (
            "engine: ratio",
            f"{ratio:.2f}",
            f"reader thread tiles/s / decoders tiles/s (medians; >= 1: not slower); per interleaved "
            f"pair {pairs}; zarr bytes of each source's {args.reps} runs: "
            + ", ".join(
                f"{k} {'identical' if len(d) == 1 else 'DIFFER'}" for k, d in digests.items()
            )
            + f"; between the sources: {across}; threads {args.threads}, "
            f"batch {args.batch_size}; load avg {load_before} -> {loadavg()}",
        )
    )
    return ratio
