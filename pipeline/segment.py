"""Segment one slide: the main job behind `wsi-segment SLIDE` and the Prefect flows.

Three stages, run in order by `run_stages` (the one sequence: `segment_slide` passes the
functions, the Prefect slide flow the same functions wrapped as tasks), unless the slide's
outputs are already up to date (`pipeline.up_to_date`, decided before any of them runs):

1. `prepare_stage` (pipeline/prepare.py) open the slide, check mpp, decide the run policy
              (`pipeline.run_policy`), load the model, detect tissue, plan chunks; a local
              run starts reading while the model loads;
2. `infer`    run every tissue chunk, streaming probabilities into the zarr store inside a
              temporary folder: through the engine (`pipeline.inference.engine`: a read
              source, the model's compute threads, the writer) as the policy says, in this
              process or in bands on a Dask cluster's workers, each band deciding its own
              policy there (`pipeline.inference.band_runner`);
3. `finish`   polygons, GeoJSON, overlay, summary, pyramid; then rename the temporary folder
              to its final name so a slide's outputs appear all at once.

Nothing here starts Prefect; `client` lets the caller pass a `distributed.Client`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.inference.band_runner import run_bands, settle_precision
from wsi_segment.pipeline.inference.band_task import BandResult
from wsi_segment.pipeline.inference.engine import ReadSource, run_engine
from wsi_segment.pipeline.inference.engine_state import EngineStats
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.output_files import STORE_NAME
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.outputs.label_image import create_label_image, label_level0_path
from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store, level0_path
from wsi_segment.pipeline.outputs.output_dir import (
    OutputDir,
    output_error,
    read_previous_summary,
)
from wsi_segment.pipeline.params import SegmentParams

# the three stages are reached through this module (the Prefect flows call segment.prepare_stage)
from wsi_segment.pipeline.prepare import PreparedSlide
from wsi_segment.pipeline.prepare import prepare as prepare
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.pipeline.read_policy import CPU
from wsi_segment.pipeline.run_policy import CLUSTER, LOCAL, RunPolicy, band_policies
from wsi_segment.pipeline.up_to_date import ModelFiles, finished_output, is_up_to_date
from wsi_segment.wsi.slide import Slide

if TYPE_CHECKING:  # distributed is imported only when a cluster is used
    from distributed import Client


@dataclass
class SlideResult:
    """What one slide run ended with (the batch table is made of these)."""

    slide: str
    # "done" | "up-to-date" | "failed" | "known-failure" (pipeline.known_failures);
    # a batch adds "interrupted" and "not started"
    status: str
    out_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    error_class: str | None = None  # a failure's `wsi_segment.errors` class name
    known_since: str | None = None  # a failure on record since then (UTC), not a new one


def infer(
    prep: PreparedSlide,
    work_dir: Path,
    client: Client | None = None,
    progress: Progress | None = None,
    stats: EngineStats | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[ChunkOutcome]:
    """Stage 2: run the tissue chunks, streaming uint8 probabilities into the zarr store.

    One engine (`pipeline.inference.engine.run_engine`) whatever reads the tiles: locally
    as the run policy `prepare` decided, on a Dask cluster in bands on the workers
    (`run_bands`), each deciding its policy there with the same function. `stats` receives
    what a local engine did (benchmarks). Once `cancel` is cancelled the engine, or the
    bands, stop and its reason is raised."""
    t0 = time.perf_counter()
    zarr_path = work_dir / STORE_NAME
    create_stores(prep, zarr_path)
    progress = progress or NullProgress()
    try:
        if client is not None:
            outcomes = _infer_on_cluster(prep, zarr_path, client, progress, cancel)
        else:
            outcomes = _infer_here(prep, zarr_path, progress, stats, cancel)
    finally:
        progress.close()
        prep.close_prefetch()
    prep.timings["inference_s"] = time.perf_counter() - t0
    return outcomes


def _infer_here(
    prep: PreparedSlide,
    zarr_path: Path,
    progress: Progress,
    stats: EngineStats | None,
    cancel: CancelToken,
) -> list[ChunkOutcome]:
    """The engine in this process, run as the policy `prepare` decided."""
    policy = local_policy(prep)
    job = slide_job(prep, zarr_path, policy.batch_size.value)
    progress.start(prep.tiles_total, unit="tile", desc=prep.name)
    source = local_source(prep, policy)
    prep.read_device, prep.run_policy = policy.read_report(), policy.as_dict()
    try:  # nothing between: run_engine closes the source on every path
        outcomes = run_engine(
            job,
            prep.specs,
            source,
            progress,
            stats,
            cancel=cancel,
            writers=policy.writers.value,
            computes=policy.compute_threads.value,
            locked=policy.model_lock.value,
        )
    finally:
        _record_reads(prep, source)
    prep.precision = _precision_report(prep.model)
    return outcomes


def local_policy(prep: PreparedSlide) -> RunPolicy:
    """The policy a local run executes: the one `prepare` decided for this process."""
    if prep.policy is None or prep.policy.place != LOCAL:
        raise ValueError(f"{prep.slide_path}: prepared for a Dask cluster, not a local run")
    return prep.policy


def local_source(prep: PreparedSlide, policy: RunPolicy) -> ReadSource:
    """What reads a local run's tiles, as `policy` says: the device read path, decoder
    processes (maybe started early), or the reader thread, which adopts the prefetcher
    reading since planning. The source owns what it adopted, and is closed here if an
    interrupt lands before it is handed back."""
    decoders = policy.decoders.value
    # imported here: they import torch, which a rerun of finished slides never loads
    from wsi_segment.pipeline.inference.decoder_reads import DecoderProcesses
    from wsi_segment.pipeline.inference.reader_thread import HostTiles, ReaderThread

    source: ReadSource
    decoder = policy.device_decoder
    if decoder is not None and prep.read_tiles is not None:
        from wsi_segment.pipeline.inference.device_tiles import DeviceTiles  # torch: loaded

        device = prep.model.get().model.device
        tiles = DeviceTiles(prep.reader, prep.read_tiles, device, decoder)
        source = ReaderThread(tiles)
    elif decoders:
        source = DecoderProcesses(decoders, prep.take_decode_pool())
    else:
        source = ReaderThread(HostTiles(prep.reader, prep.take_prefetch()))
    try:
        if decoder is not None or decoders:
            prep.close_prefetch()  # the prefetcher (and early decoders) go unused
        else:
            pool = prep.take_decode_pool()  # none: the policy named no decoders
            if pool is not None:
                pool.close()
    except BaseException:
        source.close()
        raise
    return source


def _record_reads(prep: PreparedSlide, source: ReadSource) -> None:
    """Storage tiles decoded and served again (summary.json `run_stats`), and the CPU
    seconds the prefetcher read for, of whichever source read them."""
    from wsi_segment.pipeline.inference.reader_thread import ReaderThread

    reads = source.reads if isinstance(source, ReaderThread) else None
    prefetch = getattr(reads, "prefetch", None)
    if prefetch is not None:
        prep.timings["prefetch_read_cpu_s"] = prefetch.read_s
    counts = getattr(reads, "cache", None)  # the device read path's
    if counts is None:
        counts = getattr(reads, "tile_reuse", None)  # the slide library's
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
    """Bands of the engine on the cluster's workers, each running the policy it decides
    there; one worker decides `auto` precision for all (no mixed-precision slide)."""
    planned = prep.policy
    if planned is None:
        raise ValueError(f"{prep.slide_path}: prepared without a run policy")
    job = slide_job(prep, zarr_path, planned.batch_size.value)  # each band sets its own
    settled, prep.precision = settle_precision(job, prep.specs, client, prep.params, cancel)
    progress.start(prep.tiles_total, unit="tile", desc=prep.name)
    bands: list[BandResult] = []
    outcomes = run_bands(
        job,
        prep.specs,
        client,
        prep.params,
        progress=progress,
        key_prefix=f"band-{prep.fingerprint[:16]}",
        results=bands,
        settled=settled,
        cancel=cancel,
    )
    prep.run_policy = band_policies(planned.chunk_tiles, [b.policy for b in bands])
    prep.read_device = bands[0].reads if bands else NO_BANDS_READS
    return outcomes


# run_stats' read choice of a cluster's run where no band ran (no tissue)
NO_BANDS_READS = {
    "read_device": CPU,
    "read_device_reason": "a Dask cluster's bands choose on their workers, and none ran",
}


def slide_job(prep: PreparedSlide, zarr_path: Path, batch_size: int) -> SlideJob:
    """What every read source and runner needs to run any chunk of the prepared slide into
    the store at `zarr_path` (made by `infer`; benchmarks make their own), in forward passes
    of `batch_size` tiles (the policy's)."""
    return SlideJob(
        reader=prep.reader,
        n_classes=len(prep.meta.classes),
        batch_size=batch_size,
        gate=prep.params.gate,
        zarr_path=str(level0_path(zarr_path)),
        labels_path=str(label_level0_path(zarr_path)),
        tissue_mask=prep.tissue.mask,
        tissue_downsample=float(prep.tissue.downsample),
        level0_per_output=prep.level0_per_output,
        model=prep.model,
        simplify_tolerance=prep.params.simplify_tolerance,
        keep_exact_polygons=bool(prep.rois),
        slide_extent_out=(
            prep.slide.dimensions[0] / prep.level0_per_output,
            prep.slide.dimensions[1] / prep.level0_per_output,
        ),
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


def _precision_report(model: ModelHandle) -> dict[str, Any]:
    """What this process's model ran in (a cluster's comes from the worker that decided)."""
    return model.get().runtime.report()


def finish(
    prep: PreparedSlide,
    outcomes: list[ChunkOutcome],
    out: OutputDir,
    cancel: CancelToken = NEVER_CANCELLED,
) -> SlideResult:
    """Stage 3: vector outputs, overlay, summary and pyramid; then publish the folder,
    unless `cancel` was cancelled meanwhile (its reason is raised: the folder is removed)."""
    from wsi_segment.pipeline.outputs.finish_outputs import write_outputs

    cancel.check()
    summary = write_outputs(prep, outcomes, out.work_dir)
    cancel.check()
    out.commit()
    return SlideResult(prep.slide_path, "done", prep.out_dir, summary)


@dataclass(frozen=True)
class Stages:
    """The three stages `run_stages` calls in order. `segment_slide` passes the functions
    above; the Prefect flow passes the same functions wrapped as tasks (with retries)."""

    prepare: Callable[[str, str | Path, SegmentParams], PreparedSlide]
    infer: Callable[[PreparedSlide, Path], list[ChunkOutcome]]
    finish: Callable[[PreparedSlide, list[ChunkOutcome], OutputDir], SlideResult]


def up_to_date_result(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    model: ModelFiles | None = None,
) -> SlideResult | None:
    """The "up-to-date" result of a slide whose finished output is this run, decided before
    anything loads (`pipeline.up_to_date.finished_output`; `model`: the model files' identity
    when hashed once for many slides); None when it must run. A batch asks first, so
    finished slides cost it no task either."""
    t0 = time.perf_counter()
    finished = finished_output(str(slide_path), out_root, params, model)
    if finished is None:
        return None
    out_dir, summary = finished
    return SlideResult(
        str(slide_path), "up-to-date", out_dir, summary, None, time.perf_counter() - t0
    )


def run_stages(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    stages: Stages,
    cancel: CancelToken = NEVER_CANCELLED,
) -> SlideResult:
    """The one stage sequence of a slide, for the CLI and the flows alike: skip if up to
    date (decided before anything loads: `pipeline.up_to_date`); else prepare, and infer and
    finish inside the atomic output folder. A write error (disk full, permissions changed
    mid-run) becomes the OutputError with its fix; the slide and its background readers are
    closed whatever happens. `cancel` (the stages the caller passes check it too) is checked
    between the stages: once cancelled, its reason is raised and the partial folder removed."""
    t0 = time.perf_counter()
    skipped = up_to_date_result(slide_path, out_root, params)
    if skipped is not None:
        return skipped
    cancel.check()
    prep = stages.prepare(str(slide_path), out_root, params)
    try:
        cancel.check()
        if is_up_to_date(prep):  # up to date since the check above (another run finished it)
            summary = read_previous_summary(prep.out_dir) or {}
            seconds = time.perf_counter() - t0
            return SlideResult(prep.slide_path, "up-to-date", prep.out_dir, summary, None, seconds)
        with OutputDir(prep.out_root, prep.name, prep.params.overwrite) as out:
            try:
                outcomes = stages.infer(prep, out.work_dir)
                cancel.check()
                result = stages.finish(prep, outcomes, out)
            except OSError as exc:
                raise output_error(out.work_dir, exc) from exc
    finally:
        prep.close_prefetch()
        prep.slide.close()
    result.seconds = time.perf_counter() - t0
    return result


def prepare_stage(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    local: bool = True,
    at_once: int = 1,
    cancel: CancelToken = NEVER_CANCELLED,
) -> PreparedSlide:
    """Stage 1 as every door runs it (`segment_slide`, the Prefect slide flow): a local run
    starts reading while the model loads (the readers its policy names, for `at_once`
    slides in flight on this machine); a cluster's workers read for themselves, each band
    deciding its policy there. `cancel`: checked between prepare's steps."""
    place = LOCAL if local else CLUSTER
    return prepare(
        slide_path, out_root, params, early=local, place=place, at_once=at_once, cancel=cancel
    )


def segment_slide(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams | None = None,
    progress: Progress | None = None,
    client: Client | None = None,
) -> SlideResult:
    """Run all stages for one slide; raises `WsiSegmentError` on expected failures."""
    stages = Stages(
        prepare=lambda path, root, p: prepare_stage(path, root, p, local=client is None),
        infer=lambda prep, work_dir: infer(prep, work_dir, client=client, progress=progress),
        finish=finish,
    )
    return run_stages(slide_path, out_root, params or SegmentParams(), stages)


def _qupath_offset(slide: Slide) -> tuple[float, float]:
    """QuPath shows the bounded region of slides with openslide.bounds-x/y (e.g. MRXS)."""
    bx, by = getattr(slide, "bounds_offset", (0, 0)) or (0, 0)
    return (-float(bx), -float(by))
