"""Segment one slide: the main job behind `wsi-segment SLIDE` and the Prefect flows.

Three stages, run in order by `run_stages` (the one sequence: `segment_slide` passes the
functions, the Prefect flow the same functions wrapped as tasks):

1. `prepare`  open the slide, check mpp, load the model, detect tissue, plan chunks,
              decide whether the outputs are already up to date;
2. `infer`    run every tissue chunk with Dask, streaming probabilities into the zarr store
              inside a temporary folder;
3. `finish`   polygons, GeoJSON, overlay, summary, pyramid; then rename the temporary folder
              to its final name so a slide's outputs appear all at once.

Nothing here starts Prefect; `client` lets the caller pass a `distributed.Client`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import ModelError, OutputError
from wsi_segment.pipeline.inference.chunk_job import SlideJob
from wsi_segment.pipeline.inference.chunk_plan import (
    chunk_read_backend,
    model_geometry,
    plan_reader,
    plan_slide,
    slide_tissue,
)
from wsi_segment.pipeline.inference.chunk_prefetch import ChunkPrefetcher
from wsi_segment.pipeline.inference.chunk_runner import run_chunks, settle_precision_on_cluster
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.engine import run_engine
from wsi_segment.pipeline.inference.engine_state import EngineStats
from wsi_segment.pipeline.inference.model_handle import (
    ModelHandle,
    load_for_process,
    model_device_type,
)
from wsi_segment.pipeline.inference.slide_state import PreparedSlide, SlideResult
from wsi_segment.pipeline.inference.startup import Background, gc_paused, read_overlay_thumbnail
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store
from wsi_segment.pipeline.outputs.output_dir import (
    OutputDir,
    model_sha256,
    output_error,
    read_previous_summary,
    run_fingerprint,
    slide_output_name,
)
from wsi_segment.pipeline.params import (
    SegmentParams,
    expected_decoders,
    run_batch_size,
    run_decoders,
    run_threads,
)
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.wsi.slide import Slide, open_slide

if TYPE_CHECKING:  # distributed is imported only when a cluster is used
    from distributed import Client

ZARR_NAME = "probabilities.ome.zarr"


def resolve_model_dir(params: SegmentParams) -> Path:
    """The model folder asked for, or the demo model shipped with the package."""
    if params.model_dir is not None:
        return Path(params.model_dir)
    # = models.bundle.demo_model_dir(), without importing torch here (the model loads in a
    # background thread while tissue detection runs); our own package, never a `models`
    # folder that happens to be on sys.path
    import wsi_segment.models

    return Path(wsi_segment.models.__file__).resolve().parent / "demo_model"


def prepare(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams,
    prefetch: bool = False,
    decoders: int = 0,
) -> PreparedSlide:
    """Stage 1: everything cheap that decides what the run will do.

    The model (importing torch, timm and smp is most of a small run's fixed cost, and holds
    one core) loads in a background thread while this thread detects tissue and plans the
    chunks; with `prefetch`, chunk images then start being read on the core the loader
    leaves free, so the first forward passes find their tiles decoded (the side work is in
    `pipeline.inference.startup`, planning from model.json in `pipeline.inference.chunk_plan`).
    With `decoders`, the device engine's decoder processes start instead (`DecodePool`,
    held by the PreparedSlide until `infer` hands it to the engine).
    """
    t0 = time.perf_counter()
    slide_path = str(slide_path)
    name = slide_output_name(slide_path, params.output_name)
    model_dir = resolve_model_dir(params)
    if not model_dir.is_dir():
        raise ModelError(
            f"{model_dir}: model folder not found; pass --model with a folder holding "
            "model.json and model.safetensors (or omit --model for the demo model)"
        )
    slide = open_slide(slide_path, backend=params.backend, mpp=params.mpp)
    mpp = slide.require_mpp()
    with gc_paused():
        return _prepare_opened(
            slide_path, name, out_root, params, (prefetch, decoders), model_dir, slide, mpp, t0
        )


def _prepare_opened(
    slide_path: str,
    name: str,
    out_root: str | Path,
    params: SegmentParams,
    readers: tuple[bool, int],  # (prefetch, decoders): what starts reading after planning
    model_dir: Path,
    slide: Slide,
    mpp: tuple[float, float],
    t0: float,
) -> PreparedSlide:
    prefetch, decoders = readers
    loader = Background(load_for_process, str(model_dir), params.device, params.precision)
    # openslide decoding and PIL's reduce release the GIL: this runs beside the import
    thumb = (
        Background(read_overlay_thumbnail, slide_path, slide.backend, params.mpp)
        if prefetch
        else None
    )
    prefetcher: ChunkPrefetcher | None = None
    pool: DecodePool | None = None
    try:
        t1 = time.perf_counter()
        tissue, rois = slide_tissue(slide, params)
        t_tissue = time.perf_counter()
        geometry = model_geometry(model_dir)
        planned = grid = read_backend = None
        if geometry is not None:
            grid, planned = plan_slide(slide, mpp, geometry, params, tissue)
            read_backend = chunk_read_backend(slide, params, planned.read_level)
            reader = plan_reader(slide_path, slide, params, planned, grid, read_backend)
            if decoders and planned.specs:
                pool = DecodePool(reader, planned.specs, decoders)
            elif prefetch and planned.specs:
                prefetcher = ChunkPrefetcher(reader, planned.specs)
        t2 = time.perf_counter()
        model, lock = loader.result()
        meta = model.meta
        if geometry != (int(meta.tile_size), float(meta.mpp)):  # unreadable json: plan now
            if prefetcher is not None:
                prefetcher.close()
                prefetcher = None
            if pool is not None:  # infer starts the engine's own for the new plan
                pool.close()
                pool = None
            grid, planned = plan_slide(
                slide, mpp, (int(meta.tile_size), float(meta.mpp)), params, tissue
            )
            read_backend = chunk_read_backend(slide, params, planned.read_level)
        # planned before the model loaded, or above from the loaded model's own geometry
        assert grid is not None and planned is not None
        handle = ModelHandle.with_model(
            model, str(model_dir), params.device, params.precision, lock
        )
        model_hash = model_sha256(model_dir)  # after the load, which names a missing file best
        fingerprint = run_fingerprint(slide_path, model_hash, params, meta)
    except BaseException:
        if prefetcher is not None:
            prefetcher.close()
        if pool is not None:
            pool.close()
        with contextlib.suppress(BaseException):
            loader.result()  # never leave a thread importing torch behind
        if thumb is not None:
            with contextlib.suppress(BaseException):
                thumb.result()
        raise
    t3 = time.perf_counter()
    return PreparedSlide(
        slide_path=slide_path,
        name=name,
        out_root=Path(out_root),
        params=params,
        slide=slide,
        mpp=mpp,
        model=handle,
        meta=meta,
        model_dir=model_dir,
        model_hash=model_hash,
        fingerprint=fingerprint,
        tissue=tissue,
        rois=rois,
        grid=grid,
        level0_per_model=planned.level0_per_model,
        read_level=planned.read_level,
        output_shape=planned.output_shape,
        chunk_out=planned.chunk_out,
        specs=planned.specs,
        timings={
            # tissue + plan run while the model loads: open_and_model is the rest of prepare
            "open_and_model_s": (t1 - t0) + (t3 - t2),
            "tissue_and_plan_s": t2 - t1,
            "tissue_s": t_tissue - t1,
            "model_load_s": loader.seconds,
            **({"decoder_spawn_s": pool.spawn_s} if pool is not None else {}),
        },
        read_backend=read_backend,
        prefetch=prefetcher,
        decode_pool=pool,
        overlay_thumb=thumb,
    )


def is_up_to_date(prep: PreparedSlide) -> bool:
    """True when the final folder holds a complete run with the same fingerprint."""
    previous = read_previous_summary(prep.out_dir)
    if previous is None:
        return False
    if previous.get("fingerprint") == prep.fingerprint:
        return not prep.params.overwrite
    if not prep.params.overwrite:
        raise OutputError(
            f"{prep.out_dir} holds results of a different run (other model or parameters); "
            "pass --overwrite to replace them or choose another --out"
        )
    return False


def _device_type(model: ModelHandle, client: Client | None, device: str) -> str:
    """Where the model runs: this process's loaded model, or for Dask workers (whose
    devices this process cannot see) the device asked for (`auto` counts as the CPU)."""
    if client is not None:
        return "cuda" if device == "cuda" else "cpu"
    loaded, _lock = model.get()
    return model_device_type(loaded)


def infer(
    prep: PreparedSlide,
    work_dir: Path,
    client: Client | None = None,
    progress: Progress | None = None,
    stats: EngineStats | None = None,
) -> list[ChunkOutcome]:
    """Stage 2: run the tissue chunks, streaming uint8 probabilities into the zarr store.

    `stats` receives what the device engine did, when it runs (benchmarks)."""
    t0 = time.perf_counter()
    zarr_path = work_dir / ZARR_NAME
    create_probability_store(
        zarr_path,
        list(prep.meta.classes),
        list(prep.meta.colors),
        prep.output_shape,
        (prep.chunk_out, prep.chunk_out),
        prep.output_mpp,
        prep.level0_per_output,
        offset_level0=_qupath_offset(prep.slide),
    )
    device_type = _device_type(prep.model, client, prep.params.device)
    job = SlideJob(
        slide_path=prep.slide_path,
        backend=prep.slide.backend,
        mpp_override=prep.params.mpp,
        level0_per_model=prep.level0_per_model,
        read_level=prep.read_level,
        grid=prep.grid,
        n_classes=len(prep.meta.classes),
        batch_size=run_batch_size(prep.params.batch_size, device_type),
        gate=prep.params.gate,
        zarr_path=str(zarr_path / "0"),
        tissue_mask=prep.tissue.mask,
        tissue_downsample=float(prep.tissue.downsample),
        level0_per_output=prep.level0_per_output,
        model=prep.model,
        read_backend=prep.read_backend,
    )
    progress = progress or NullProgress()
    if client is not None:  # one worker decides 'auto' for all (no mixed-precision slide)
        job, prep.precision = settle_precision_on_cluster(job, prep.specs, client)
    progress.start(prep.tiles_total, unit="tile", desc=prep.name)
    decoders = run_decoders(prep.params.decoders, device_type) if client is None else 0
    try:
        if decoders:  # the device engine reads with its own processes, maybe started early
            pool = prep.take_decode_pool()
            prep.close_prefetch()
            outcomes = run_engine(job, prep.specs, decoders, progress, stats, pool)
        else:
            outcomes = run_chunks(
                job,
                prep.specs,
                threads=run_threads(prep.params.threads, device_type),
                client=client,
                progress=progress,
                key_prefix=f"chunk-{prep.fingerprint[:16]}",
                prefetch=prep.prefetch if client is None else None,
            )
    finally:
        progress.close()
        if prep.prefetch is not None:
            prep.timings["prefetch_read_cpu_s"] = prep.prefetch.read_s
            reuse = prep.prefetch.tile_reuse
            if reuse is not None:
                prep.read_stats = {
                    "storage_tiles_decoded": reuse.tiles_decoded,
                    "storage_tiles_reused": reuse.tiles_reused,
                }
        prep.close_prefetch()
    prep.timings["inference_s"] = time.perf_counter() - t0
    if client is None:
        prep.precision = _precision_report(prep.model)
    return outcomes


def _precision_report(model: ModelHandle) -> dict[str, Any]:
    """What this process's model ran in (a cluster's comes from the worker that decided)."""
    loaded, _lock = model.get()
    report = getattr(loaded, "precision_report", None)
    return dict(report()) if report is not None else {}


def finish(prep: PreparedSlide, outcomes: list[ChunkOutcome], out: OutputDir) -> SlideResult:
    """Stage 3: vector outputs, overlay, summary and pyramid; then publish the folder."""
    from wsi_segment.pipeline.outputs.finish_outputs import write_outputs

    summary = write_outputs(prep, outcomes, out.work_dir)
    out.commit()
    return SlideResult(prep.slide_path, "done", prep.out_dir, summary)


@dataclass(frozen=True)
class Stages:
    """The three stages `run_stages` calls in order. `segment_slide` passes the functions
    above; the Prefect flow passes the same functions wrapped as tasks (with retries)."""

    prepare: Callable[[str, str | Path, SegmentParams], PreparedSlide]
    infer: Callable[[PreparedSlide, Path], list[ChunkOutcome]]
    finish: Callable[[PreparedSlide, list[ChunkOutcome], OutputDir], SlideResult]


def run_stages(
    slide_path: str | Path, out_root: str | Path, params: SegmentParams, stages: Stages
) -> SlideResult:
    """The one stage sequence of a slide, for the CLI and the flows alike: prepare; skip if up
    to date; else infer and finish inside the atomic output folder. A write error (disk full,
    permissions changed mid-run) becomes the OutputError with its fix; the slide and its
    background readers are closed whatever happens."""
    t0 = time.perf_counter()
    prep = stages.prepare(str(slide_path), out_root, params)
    try:
        if is_up_to_date(prep):
            summary = read_previous_summary(prep.out_dir) or {}
            return SlideResult(prep.slide_path, "up-to-date", prep.out_dir, summary, None, 0.0)
        with OutputDir(prep.out_root, prep.name, prep.params.overwrite) as out:
            try:
                result = stages.finish(prep, stages.infer(prep, out.work_dir), out)
            except OSError as exc:
                raise output_error(out.work_dir, exc) from exc
    finally:
        prep.close_prefetch()
        prep.slide.close()
    result.seconds = time.perf_counter() - t0
    return result


def segment_slide(
    slide_path: str | Path,
    out_root: str | Path,
    params: SegmentParams | None = None,
    progress: Progress | None = None,
    client: Client | None = None,
) -> SlideResult:
    """Run all stages for one slide; raises `WsiSegmentError` on expected failures."""
    stages = Stages(
        prepare=lambda path, root, p: prepare(
            path,
            root,
            p,
            prefetch=client is None and not expected_decoders(p),
            decoders=expected_decoders(p) if client is None else 0,
        ),
        infer=lambda prep, work_dir: infer(prep, work_dir, client=client, progress=progress),
        finish=finish,
    )
    return run_stages(slide_path, out_root, params or SegmentParams(), stages)


def _qupath_offset(slide: Slide) -> tuple[float, float]:
    """QuPath shows the bounded region of slides with openslide.bounds-x/y (e.g. MRXS)."""
    bx, by = getattr(slide, "bounds_offset", (0, 0)) or (0, 0)
    return (-float(bx), -float(by))
