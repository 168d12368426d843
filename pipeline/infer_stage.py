"""Stage 2 of a slide run: every tissue chunk through the engine, into the zarr store.

One engine (`pipeline.inference.engine.run_engine`) whatever reads the tiles: in this
process, as the run policy `prepare` decided (a read source, the model's compute threads,
the writer), or in bands on a Dask cluster's workers, each band running that plan with what
depends on its worker's machine decided there (`pipeline.inference.band_runner`). `pipeline.segment` runs it between `prepare` and `finish`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.inference.band_runner import run_bands, settle_plan
from wsi_segment.pipeline.inference.band_task import BandResult
from wsi_segment.pipeline.inference.engine import (
    EngineSizes,
    ReadSource,
    TileExecutor,
    run_engine,
)
from wsi_segment.pipeline.inference.engine_state import EngineStats
from wsi_segment.pipeline.inference.read_sources import ReaderThread, plan_source
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.output_files import STORE_NAME
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome, output_extent
from wsi_segment.pipeline.outputs.label_image import create_label_image, label_level0_path
from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store, level0_path
from wsi_segment.pipeline.prepare import PreparedSlide
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.pipeline.read_policy import CPU, Decision
from wsi_segment.pipeline.run_policy import CLUSTER, LOCAL, ExecutionPlan
from wsi_segment.pipeline.threads import Background
from wsi_segment.wsi.slide import Slide

if TYPE_CHECKING:  # distributed is imported only when a cluster is used
    from distributed import Client


def infer(
    prep: PreparedSlide,
    work_dir: Path,
    client: Client | None = None,
    progress: Progress | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[ChunkOutcome]:
    """Stage 2: run the tissue chunks, streaming uint8 probabilities into the zarr store.

    One engine (`pipeline.inference.engine.run_engine`) whatever reads the tiles: locally
    as the run policy `prepare` decided, on a Dask cluster in bands on the workers
    (`run_bands`), each running that plan for its worker (`run_policy.for_worker`); a local
    engine's figures go to summary.json's `engine` (`prep.engine`). Once `cancel` is
    cancelled the engine, or the bands, stop and its reason is raised."""
    t0 = time.perf_counter()
    zarr_path = work_dir / STORE_NAME
    Background(create_stores, prep, zarr_path).result_through_interrupts()
    progress = progress or NullProgress()
    try:
        if client is not None:
            outcomes = _infer_on_cluster(prep, zarr_path, client, progress, cancel)
        else:
            outcomes = _infer_here(prep, zarr_path, progress, cancel, t0)
    finally:
        progress.close()
        prep.close_prefetch()
    prep.timings["inference_s"] = time.perf_counter() - t0
    return outcomes


def _infer_here(
    prep: PreparedSlide,
    zarr_path: Path,
    progress: Progress,
    cancel: CancelToken,
    started: float,
) -> list[ChunkOutcome]:
    """The engine in this process, run as the policy `prepare` decided, with the executor it
    built from that policy; its figures, times from `started` (the stage's start), are kept
    in `prep.engine` even when it stops."""
    policy, executor = local_run(prep)
    job = slide_job(prep, zarr_path)
    progress.start(prep.tiles_total, unit="tile", desc=prep.name)
    prep.read_device, prep.run_policy = policy.read_report(), policy.as_dict()
    sizes = EngineSizes.of(policy)
    source = local_source(prep, policy)
    stats = EngineStats()
    try:  # nothing between: run_engine closes the source on every path
        outcomes = run_engine(job, prep.specs, source, executor, sizes, stats, progress, cancel)
    finally:
        _record_reads(prep, source)
        prep.engine = stats.report(started)
    prep.precision = prep.model.get().report()  # what this process's model ran in
    return outcomes


def local_run(prep: PreparedSlide) -> tuple[ExecutionPlan, TileExecutor]:
    """The policy a local run executes, the one `prepare` decided for this process, and the
    executor it built from it (`run_start.ReadyModel`)."""
    if prep.policy is None or prep.policy.place != LOCAL:
        raise ValueError(f"{prep.slide_path}: prepared for a Dask cluster, not a local run")
    if prep.executor is None:  # a PreparedSlide pickled drops it: it runs where prepared
        raise ValueError(f"{prep.slide_path}: prepared in another process, not run there")
    return prep.policy, prep.executor


def local_source(prep: PreparedSlide, policy: ExecutionPlan) -> ReadSource:
    """What reads a local run's tiles, as `policy` says (`plan_source`, as a Dask band's):
    the device read path, decoder processes (maybe started early), or the reader thread,
    which adopts the host reads started once planned. Where it is not the reader thread,
    the overlay's thumbnail read ends first, so decoders or the device path have the cores;
    the source is closed here if an interrupt lands before it is handed back."""
    early = prep.decode_pool, prep.prefetch  # the slide holds them until they are adopted
    source = plan_source(policy, prep.model, prep.reader, prep.read_tiles, *early)
    try:
        prep.readers_handed_over()
        if policy.device_decoder is not None or policy.decoders.value:
            prep.close_prefetch()
    except BaseException:
        source.close()
        raise
    return source


def _record_reads(prep: PreparedSlide, source: ReadSource) -> None:
    """Storage tiles decoded and served again (summary.json `run_stats`), and the CPU
    seconds the host reads took, of whichever source read them."""
    from wsi_segment.pipeline.inference.host_tiles import HostTiles

    reads = source.reads if isinstance(source, ReaderThread) else None
    if isinstance(reads, HostTiles):
        prep.timings["prefetch_read_cpu_s"] = reads.read_s
    counts: Any = getattr(reads, "tile_reuse", reads)  # the slide library's, or the device path's
    if counts is not None:
        prep.read_stats = {
            "storage_tiles_decoded": counts.tiles_decoded,
            "storage_tiles_reused": counts.tiles_reused,
        }
        direct = getattr(counts, "blocks_direct", None)  # wsi.tiff_blocks, past tiffslide's zarr
        if direct is not None:
            prep.read_stats["blocks_decoded_from_file"] = direct


def _infer_on_cluster(
    prep: PreparedSlide, zarr_path: Path, client: Client, progress: Progress, cancel: CancelToken
) -> list[ChunkOutcome]:
    """Bands of the engine on the cluster's workers, each running the slide's plan (decided
    by `prepare`, settled once where it waits for the bf16 verdict: `settle_plan`) as its
    worker's own machine says; summary.json records each distinct band plan and what the
    first band's model ran in."""
    planned = prep.policy
    if planned is None:
        raise ValueError(f"{prep.slide_path}: prepared without a run policy")
    job = slide_job(prep, zarr_path)
    plan = settle_plan(job, prep.specs, client, planned, cancel)
    progress.start(prep.tiles_total, unit="tile", desc=prep.name)
    bands: list[BandResult] = []
    outcomes = run_bands(
        job,
        prep.specs,
        client,
        plan,
        progress=progress,
        key_prefix=f"band-{prep.fingerprint[:16]}",
        results=bands,
        cancel=cancel,
    )
    prep.policy = plan
    prep.run_policy = band_policies(plan.chunk_tiles, [b.policy for b in bands])
    prep.read_device = bands[0].reads if bands else NO_BANDS_READS
    prep.precision = bands[0].runtime if bands else no_bands_precision(plan)
    return outcomes


def band_policies(chunk_tiles: Decision[int], bands: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """summary.json `run_policy` of a Dask run: the chunk size, decided where the slide was
    planned, and each distinct plan the bands ran (`as_dict`: the shipped plan with their
    workers' decisions), with the bands (in plan order) that ran it."""
    distinct: dict[str, dict[str, Any]] = {}
    for k, policy in enumerate(bands):
        entry = distinct.setdefault(json.dumps(policy, sort_keys=True), {"bands": [], **policy})
        entry["bands"].append(k)
    return {
        "place": CLUSTER,
        "chunk_tiles": chunk_tiles.as_dict(),
        "band_policies": list(distinct.values()),
    }


# run_stats' read choice of a cluster's run where no band ran (no tissue)
NO_BANDS_READS = {
    "read_device": CPU,
    "read_device_reason": "a Dask cluster's bands choose on their workers, and none ran",
}


def no_bands_precision(plan: ExecutionPlan) -> dict[str, Any]:
    """summary.json `precision` of a cluster's run where no band ran (no tissue): the
    plan's precision and runtime, which no model carried out."""
    return {
        "device": plan.device.value,
        "autocast": plan.precision.value,
        "reason": f"{plan.precision.value}: {plan.precision.reason}; no band ran",
        "calibration": None if plan.calibration is None else dict(plan.calibration),
        "runtime": plan.runtime.value,
        "runtime_reason": plan.runtime.reason,
        "runtime_warning": None,
    }


def slide_job(prep: PreparedSlide, zarr_path: Path) -> SlideJob:
    """What every read source and runner needs to run any chunk of the prepared slide into
    the store at `zarr_path` (made by `infer`; benchmarks make their own)."""
    return SlideJob(
        reader=prep.reader,
        n_classes=len(prep.meta.classes),
        gate=prep.params.gate,
        zarr_path=str(level0_path(zarr_path)),
        labels_path=str(label_level0_path(zarr_path)),
        tissue_mask=prep.tissue.mask,
        tissue_downsample=float(prep.tissue.downsample),
        level0_per_output=prep.level0_per_output,
        model=prep.model,
        simplify_tolerance=prep.params.simplify_tolerance,
        keep_exact_polygons=bool(prep.rois),
        slide_extent_out=output_extent(prep.slide.dimensions, prep.level0_per_output),
    )


def create_stores(prep: PreparedSlide, zarr_path: Path) -> None:
    """The empty probability store and label image the chunks are written into."""
    create_probability_store(
        zarr_path,
        list(prep.meta.classes),
        list(prep.meta.colors),
        prep.output_shape,
        (prep.chunk_out, prep.chunk_out),
        prep.output_mpp,
        prep.level0_per_output,
        offset_level0=_qupath_offset(prep.slide),
        name=prep.name,
    )
    create_label_image(zarr_path)


def _qupath_offset(slide: Slide) -> tuple[float, float]:
    """QuPath shows the bounded region of slides with openslide.bounds-x/y (e.g. MRXS)."""
    bx, by = getattr(slide, "bounds_offset", (0, 0)) or (0, 0)
    return (-float(bx), -float(by))
