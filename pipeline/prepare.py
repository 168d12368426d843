"""Stage 1 of a slide run: open, detect tissue, plan, load the model; and its product.

`prepare` hands a `PreparedSlide` to `infer` and `finish` (pipeline.segment): the slide, the
plan, the run policy (`pipeline.run_policy`, decided here once from the machine, the options
and the slide), the loaded model's handle, the run's identity, and the readers started early
(the prefetcher, or the engine's decoders) while the model loads in the background. What it
reads and checks first is `pipeline.prepare_inputs`; the policy and what starts in the
background, `pipeline.run_start`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_segment.gc_pause import gc_paused
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.slide_plan import (
    plan_reader,
    plan_slide,
    slide_tissue,
)
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.machine import Machine, probe_machine
from wsi_segment.pipeline.outputs.output_name import slide_output_name
from wsi_segment.pipeline.outputs.ownership import refuse_in_the_way
from wsi_segment.pipeline.outputs.run_identity import run_fingerprint
from wsi_segment.pipeline.outputs.shared_access import refuse_unusable_root
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare_inputs import (
    ModelFolder,
    OpenedSlide,
    open_checked_slide,
    read_model_folder,
)
from wsi_segment.pipeline.progress import NO_PROGRESS, Progress
from wsi_segment.pipeline.run_policy import CLUSTER, LOCAL, ExecutionPlan, RunFacts
from wsi_segment.pipeline.run_start import ReadyModel, RunStart
from wsi_segment.pipeline.threads import Background, stop_wait_s
from wsi_segment.wsi.read_backend import fast_read_backend
from wsi_segment.wsi.roi import Roi
from wsi_segment.wsi.slide import Slide
from wsi_segment.wsi.tiling import ChunkPlan, ChunkSpec, TileGrid
from wsi_segment.wsi.tissue import TissueMask

if TYPE_CHECKING:
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.pipeline.inference.engine import TileExecutor
    from wsi_segment.wsi.raw_tiles import JpegTiles


@dataclass
class PreparedSlide:
    """The state handed from `prepare` to `infer` and `finish`."""

    slide_path: str
    name: str
    out_root: Path
    params: SegmentParams
    slide: Slide
    mpp: tuple[float, float]
    model: ModelHandle
    meta: ModelMeta
    model_dir: Path
    model_hash: str
    fingerprint: str
    tissue: TissueMask
    grid: TileGrid
    output_shape: tuple[int, int]  # (H, W) output pixels
    chunk_out: int  # output pixels per zarr chunk side (wsi.tiling.STORE_TILES tile cores)
    specs: list[ChunkSpec]
    # What reads the planned chunks (decoders, prefetcher, the engine's reader thread), and
    # the one place its level, scale and backend are kept (the properties below read it).
    reader: TileReader
    timings: dict[str, float] = field(default_factory=dict)
    # Local runs: chunk images being read in the background since planning (never pickled).
    prefetch: HostTiles | None = None
    # Local runs on the engine: its decoders, started after planning (never pickled);
    # `infer` hands them to `run_engine`, which closes them.
    decode_pool: DecodePool | None = None
    # Local runs: the overlay's thumbnail, read on the core the model load leaves free.
    overlay_thumb: Background[np.ndarray] | None = None
    # Local runs: storage tiles decoded / served again from memory (wsi.tile_reuse).
    read_stats: dict[str, int] = field(default_factory=dict)
    # Local runs: what the engine ran and how soon (EngineStats.report; summary.json `engine`).
    engine: dict[str, Any] = field(default_factory=dict)
    # What the forward passes ran in and why (models.runtimes.select.OpenedRuntime.report).
    precision: dict[str, Any] = field(default_factory=dict)
    # --roi: the regions (level-0 slide pixels) outputs are clipped to and reported per.
    rois: list[Roi] = field(default_factory=list)
    # --roi: the TMA cores its file marks missing (summary.json lists them; never segmented)
    missing_cores: list[Roi] = field(default_factory=list)
    # Every decision of the run with its reason (pipeline.run_policy), made before any
    # reader started; on a Dask cluster only the plan's, each band deciding its own.
    policy: ExecutionPlan | None = None
    # Local runs: the engine's executor, built beside the planning as `policy` says (never
    # pickled: another process builds its own from the plan); a cluster's bands build theirs.
    executor: TileExecutor | None = None
    # The read level's JPEG tiles when the policy reads them on the device, else None.
    read_tiles: JpegTiles | None = None
    read_device: dict[str, str] = field(default_factory=dict)  # summary.json run_stats
    run_policy: dict[str, Any] = field(default_factory=dict)  # summary.json, set by `infer`

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["prefetch"] = None
        state["decode_pool"] = None
        state["overlay_thumb"] = None
        state["executor"] = None
        return state

    def close_prefetch(self) -> None:
        """Stop the background readers (prefetch, decoders, overlay thumbnail) of a local run.
        Each is forgotten only once closed (closing is idempotent), so an interrupt landing
        here leaves it to the next cleanup rather than losing it. The thumbnail is kept for
        `finish`, and waited for as `threads.stop_wait_s` says (a remote read may hang)."""
        if self.decode_pool is not None:
            self.decode_pool.close()
            self.decode_pool = None
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None
        if self.overlay_thumb is not None:
            # its own error: finish() reports it; Ctrl-C while waiting goes on
            self.overlay_thumb.wait(stop_wait_s(self.slide_path))

    def readers_handed_over(self) -> None:
        """Forget the early decoders and prefetcher once the engine's read source has adopted
        or closed them (`read_sources.plan_source`). Until then this slide still holds them:
        an interrupt during the hand-over (imports, the source's set-up) leaves them to
        `close_prefetch`, never to no one."""
        self.decode_pool = None
        self.prefetch = None

    @property
    def out_dir(self) -> Path:
        return self.out_root / self.name

    @property
    def level0_per_model(self) -> float:
        """Level-0 pixels per model pixel."""
        return self.reader.level0_per_model

    @property
    def read_level(self) -> int:
        """The pyramid level chunks are read from."""
        return self.reader.read_level

    @property
    def read_backend(self) -> str | None:
        """Backend for chunk reads (tiffslide where it reads this slide's pixels identically
        and cheaper: `wsi.read_backend.fast_read_backend`); None: the slide's own backend."""
        return self.reader.read_backend

    @property
    def level0_per_output(self) -> float:
        return self.level0_per_model * self.grid.downsample

    @property
    def output_mpp(self) -> tuple[float, float]:
        f = self.level0_per_output
        return (self.mpp[0] * f, self.mpp[1] * f)

    @property
    def tiles_total(self) -> int:
        return sum(len(s.tiles) for s in self.specs)


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
    early: bool = False,
    cluster: Machine | None = None,
    at_once: int = 1,
    cancel: CancelToken = NEVER_CANCELLED,
    progress: Progress = NO_PROGRESS,
) -> PreparedSlide:
    """Stage 1: everything cheap that decides what the run will do, in three steps.

    1. the plan (`pipeline.run_policy`: a local run's, decided for this machine, or, given
       the `cluster` machine its workers describe (`band_runner.cluster_machine`), the
       plan a Dask run ships to its bands; `at_once`: the slides in flight on this machine,
       a batch's), decided from that machine, the options and the slide's read level;
    2. with `early`, the readers it names start (`EarlyReaders`: the engine's decoder
       processes, else the prefetcher, neither when it reads on the model's device) while
       this thread detects tissue and plans the chunks;
    3. meanwhile the model loads and its runtime opens in a background thread as the plan
       says (importing torch, timm and smp is most of a small run's fixed cost).
    `cancel` is checked between the steps (a batch's stop: its reason is raised, and what
    was started is stopped and the slide closed). `progress` is told when the run has to
    wait for the model (a cold cache: tens of seconds with nothing else on the screen).
    """
    t0 = time.perf_counter()
    slide_path = str(slide_path)
    name = slide_output_name(slide_path, params.output_name)
    refuse_in_the_way(Path(out_root) / name)  # before any work, the model's load included
    refuse_unusable_root(out_root)
    model = read_model_folder(resolve_model_dir(params))
    opened = open_checked_slide(slide_path, params)
    try:
        cancel.check()
        with gc_paused():
            place, machine = (LOCAL, probe_machine()) if cluster is None else (CLUSTER, cluster)
            facts = RunFacts(place=place, at_once=at_once)
            started = RunStart.begin(opened, model, params, machine, facts, early)
            return _prepare_started(
                Path(out_root), name, params, opened, model, started, t0, cancel, progress
            )
    except BaseException:
        opened.slide.close()
        raise


def _prepare_started(
    out_root: Path,
    name: str,
    params: SegmentParams,
    opened: OpenedSlide,
    model: ModelFolder,
    started: RunStart,
    t0: float,  # when `prepare` began: the open's share of the timings
    cancel: CancelToken,
    progress: Progress,
) -> PreparedSlide:
    """Detect tissue and plan the chunks while the model loads, then take the loaded model;
    what `started` runs is stopped on any error."""
    try:
        t1 = time.perf_counter()
        tissue = slide_tissue(opened.slide, params, opened.rois)
        t_tissue = time.perf_counter()
        cancel.check()
        grid, planned, reader = _plan_chunks(opened, params, model, started, tissue)
        t2 = time.perf_counter()
        ready = _wait_for_model(name, started, cancel, progress)
        handle = ready.handle
        fingerprint = run_fingerprint(opened.path, handle.identity, params, ready.meta)
    except BaseException:
        started.stop()
        raise
    t3 = time.perf_counter()
    return PreparedSlide(
        slide_path=opened.path,
        name=name,
        out_root=out_root,
        params=params,
        slide=opened.slide,
        mpp=opened.mpp,
        model=handle,
        meta=ready.meta,
        model_dir=model.path,
        model_hash=handle.identity,  # the bytes loaded, hashed as they were read
        fingerprint=fingerprint,
        tissue=tissue,
        rois=opened.rois,
        missing_cores=opened.missing_cores,
        grid=grid,
        output_shape=planned.output_shape,
        chunk_out=planned.chunk_out,
        specs=planned.specs,
        reader=reader,
        # tissue + plan run while the model loads: open_and_model is the rest of prepare
        timings=_timings(started, (t1 - t0) + (t3 - t2), t2 - t1, t_tissue - t1),
        prefetch=started.readers.prefetcher,
        decode_pool=started.readers.pool,
        overlay_thumb=started.readers.thumb,
        policy=ready.policy,
        executor=ready.executor,
        read_tiles=started.read_tiles,
    )


def _wait_for_model(
    name: str, started: RunStart, cancel: CancelToken, progress: Progress
) -> ReadyModel:
    """`started.loaded_model`, telling `progress` when the run has to wait for the load (a
    cold cache: tens of seconds with nothing else on the screen)."""
    if not started.loader.done():
        progress.note(f"{name}: loading the model")
    return started.loaded_model(cancel)


def _timings(
    started: RunStart, open_and_model: float, tissue_and_plan: float, tissue: float
) -> dict[str, float]:
    """summary.json's timings of `prepare` and of what `started` ran beside it."""
    return {
        "open_and_model_s": open_and_model,
        "tissue_and_plan_s": tissue_and_plan,
        "tissue_s": tissue,
        "model_load_s": started.loader.seconds,
        **started.readers.timings(),
    }


def _plan_chunks(
    opened: OpenedSlide,
    params: SegmentParams,
    model: ModelFolder,
    started: RunStart,
    tissue: TissueMask,
) -> tuple[TileGrid, ChunkPlan, TileReader]:
    """The chunks over the tissue, planned from model.json's geometry before the model has
    loaded, and what reads them; the early readers are handed that reader and the chunks."""
    slide = opened.slide
    chunk_tiles = started.policy.chunk_tiles.value
    grid, planned = plan_slide(slide, opened.mpp, model.geometry, params, tissue, chunk_tiles)
    # --backend auto: chunk reads with tiffslide where it decodes the same pixels cheaper
    auto = params.backend == "auto"
    read_backend = fast_read_backend(slide, planned.read_level) if auto else None
    reader = plan_reader(opened.path, slide, params, planned, grid, read_backend)
    started.readers.assign(reader, planned.specs)
    return grid, planned, reader
