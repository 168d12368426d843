"""Stage 1 of a slide run: open, detect tissue, plan, load the model; and its product.

`prepare` hands a `PreparedSlide` to `infer` and `finish` (pipeline.segment): the slide, the
plan, the run policy (`pipeline.run_policy`, decided here once from the machine, the options
and the slide), the loaded model's handle, the run's identity, and the readers started early
(the prefetcher, or the engine's decoders) while the model loads in the background.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_segment.errors import ModelError
from wsi_segment.models.meta import read_model_json, weights_path
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.early_readers import EarlyReaders
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.model_handle import (
    ModelHandle,
    load_for_process,
)
from wsi_segment.pipeline.inference.read_device import LevelKey, read_level_and_scale, slide_reads
from wsi_segment.pipeline.inference.slide_plan import (
    chunk_read_backend,
    plan_reader,
    plan_slide,
    slide_tissue,
)
from wsi_segment.pipeline.inference.tile_prefetch import TilePrefetcher
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.machine import Machine, probe_machine
from wsi_segment.pipeline.outputs.output_name import slide_output_name
from wsi_segment.pipeline.outputs.ownership import refuse_link
from wsi_segment.pipeline.outputs.run_identity import run_fingerprint
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.read_policy import GPU
from wsi_segment.pipeline.run_policy import (
    CLUSTER,
    LOCAL,
    RunFacts,
    RunPolicy,
    decide,
    runtime_spec,
    wants_slide_reads,
)
from wsi_segment.pipeline.startup import Background, gc_paused
from wsi_segment.wsi.roi import Roi, read_rois
from wsi_segment.wsi.slide import Slide, open_slide
from wsi_segment.wsi.slide_limits import check_slide_size
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid
from wsi_segment.wsi.tissue import TissueMask

if TYPE_CHECKING:
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.models.runtimes.select import RuntimeSpec
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
    prefetch: TilePrefetcher | None = None
    # Local runs on the engine: its decoders, started after planning (never pickled);
    # `infer` hands them to `run_engine`, which closes them.
    decode_pool: DecodePool | None = None
    # Local runs: the overlay's thumbnail, read on the core the model load leaves free.
    overlay_thumb: Background[np.ndarray] | None = None
    # Local runs: storage tiles decoded / served again from memory (wsi.tile_reuse).
    read_stats: dict[str, int] = field(default_factory=dict)
    # What the forward passes ran in and why (models.runtimes.select.OpenedRuntime.report).
    precision: dict[str, Any] = field(default_factory=dict)
    # --roi: the regions (level-0 slide pixels) outputs are clipped to and reported per.
    rois: list[Roi] = field(default_factory=list)
    # Every decision of the run with its reason (pipeline.run_policy), made before any
    # reader started; on a Dask cluster only the plan's, each band deciding its own.
    policy: RunPolicy | None = None
    # The read level's JPEG tiles when the policy reads them on the device, else None.
    read_tiles: JpegTiles | None = None
    read_device: dict[str, str] = field(default_factory=dict)  # summary.json run_stats
    run_policy: dict[str, Any] = field(default_factory=dict)  # summary.json, set by `infer`

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["prefetch"] = None
        state["decode_pool"] = None
        state["overlay_thumb"] = None
        return state

    def close_prefetch(self) -> None:
        """Stop the background readers (prefetch, decoders, overlay thumbnail) of a local run."""
        pool, self.decode_pool = self.decode_pool, None
        if pool is not None:
            pool.close()
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None
        if self.overlay_thumb is not None:
            # its own error: finish() reports it; Ctrl-C while waiting goes on
            with contextlib.suppress(Exception):
                self.overlay_thumb.result()

    def take_decode_pool(self) -> DecodePool | None:
        """The early decoders, handed over to whoever runs the engine (which closes them)."""
        pool, self.decode_pool = self.decode_pool, None
        return pool

    def take_prefetch(self) -> TilePrefetcher | None:
        """The prefetcher, handed over to the engine's reader thread (which closes it)."""
        prefetch, self.prefetch = self.prefetch, None
        return prefetch

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
    place: str = LOCAL,
    at_once: int = 1,
    cancel: CancelToken = NEVER_CANCELLED,
) -> PreparedSlide:
    """Stage 1: everything cheap that decides what the run will do, in three steps.

    1. the plan (`pipeline.run_policy`, for `place`: a local run, or the plan of a Dask
       cluster's run; `at_once`: the slides in flight on this machine, a batch's), decided
       from this machine, the options and the slide's read level;
    2. with `early`, the readers it names start (`EarlyReaders`: the engine's decoder
       processes, else the prefetcher, neither when it reads on the model's device) while
       this thread detects tissue and plans the chunks;
    3. meanwhile the model loads and its runtime opens in a background thread as the plan
       says (importing torch, timm and smp is most of a small run's fixed cost).
    `cancel` is checked between the steps (a batch's stop: its reason is raised, and what
    was started is stopped and the slide closed).
    """
    t0 = time.perf_counter()
    slide_path = str(slide_path)
    name = slide_output_name(slide_path, params.output_name)
    refuse_link(Path(out_root) / name)  # before any work: outputs are never written through it
    model_dir = resolve_model_dir(params)
    meta = _model_meta(model_dir)
    slide, mpp, rois = _open_slide(slide_path, params)
    try:
        cancel.check()
        with gc_paused():
            facts = RunFacts(place=place, at_once=at_once)
            return _prepare_opened(
                slide_path,
                name,
                out_root,
                params,
                facts,
                early,
                model_dir,
                meta,
                (slide, mpp, rois),
                t0,
                cancel,
            )
    except BaseException:
        slide.close()
        raise


def _model_meta(model_dir: Path) -> ModelMeta:
    """model.json's metadata, read without torch: a refused model.json or a missing weights
    file is said now, not after tissue detection."""
    if not model_dir.is_dir():
        raise ModelError(
            f"{model_dir}: model folder not found; pass --model with a folder holding "
            "model.json and model.safetensors (or omit --model for the demo model)"
        )
    doc, meta = read_model_json(model_dir)
    weights_path(model_dir, doc)
    return meta


def _open_slide(
    slide_path: str, params: SegmentParams
) -> tuple[Slide, tuple[float, float], list[Roi]]:
    """The slide, its mpp and its `--roi` regions; a slide too large, without mpp or with a
    bad --roi file is refused (and closed) before the model loads."""
    slide = open_slide(slide_path, backend=params.backend, mpp=params.mpp)
    try:
        check_slide_size(slide)  # before anything reads or plans in proportion to it
        mpp = slide.require_mpp()
        rois = read_rois(params.roi, slide.dimensions, slide.bounds_offset) if params.roi else []
    except BaseException:
        slide.close()
        raise
    return slide, mpp, rois


def _prepare_opened(
    slide_path: str,
    name: str,
    out_root: str | Path,
    params: SegmentParams,
    facts: RunFacts,  # where it runs, how many slides at once (the slide's facts: below)
    early: bool,  # start the plan's readers while the model loads
    model_dir: Path,
    meta: ModelMeta,
    opened: tuple[Slide, tuple[float, float], list[Roi]],  # the slide, its mpp, its regions
    t0: float,
    cancel: CancelToken,
) -> PreparedSlide:
    slide, mpp, rois = opened
    machine = probe_machine()
    geometry = (int(meta.tile_size), float(meta.mpp))
    key = read_level_and_scale(slide, mpp[0], geometry[1])
    policy, tiles = slide_policy(machine, params, facts, slide_path, slide, key)
    spec = loader_spec(policy, params)
    loader = Background(load_for_process, str(model_dir), policy.device.value, spec)
    readers = EarlyReaders.start(policy if early else None, machine, slide_path, slide, params)
    try:
        t1 = time.perf_counter()
        tissue = slide_tissue(slide, params, rois)
        t_tissue = time.perf_counter()
        cancel.check()
        grid, planned = plan_slide(slide, mpp, geometry, params, tissue, policy.chunk_tiles.value)
        read_backend = chunk_read_backend(slide, params, planned.read_level)
        reader = plan_reader(slide_path, slide, params, planned, grid, read_backend)
        readers.assign(reader, planned.specs)
        t2 = time.perf_counter()
        loaded = loader.result()
        cancel.check()
        handle = ModelHandle.of(loaded, str(model_dir), policy.device.value, spec)
        _same_geometry(model_dir, geometry, loaded.model.meta)
        fingerprint = run_fingerprint(slide_path, handle.identity, params, loaded.model.meta)
    except BaseException:
        readers.close()
        with contextlib.suppress(BaseException):
            loader.result()  # never leave a thread importing torch behind
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
        meta=loaded.model.meta,
        model_dir=model_dir,
        model_hash=handle.identity,  # the bytes loaded, hashed as they were read
        fingerprint=fingerprint,
        tissue=tissue,
        rois=rois,
        grid=grid,
        output_shape=planned.output_shape,
        chunk_out=planned.chunk_out,
        specs=planned.specs,
        reader=reader,
        timings={
            # tissue + plan run while the model loads: open_and_model is the rest of prepare
            "open_and_model_s": (t1 - t0) + (t3 - t2),
            "tissue_and_plan_s": t2 - t1,
            "tissue_s": t_tissue - t1,
            "model_load_s": loader.seconds,
            **readers.timings(),
        },
        prefetch=readers.prefetcher,
        decode_pool=readers.pool,
        overlay_thumb=readers.thumb,
        policy=policy,
        read_tiles=tiles,
    )


def loader_spec(policy: RunPolicy, params: SegmentParams) -> RuntimeSpec:
    """What the model loader opens: the plan's runtime and precision; a cluster's plan only
    needs the model's identity and metadata (its bands open their own runtime on their
    workers), so it loads into torch at fp32 and compiles and calibrates nothing."""
    if policy.place != CLUSTER:
        return runtime_spec(policy, params)
    from wsi_segment.models.runtimes.select import RuntimeSpec

    why = "a Dask cluster's plan: the bands run the model on their workers"
    return RuntimeSpec("torch", "fp32", runtime_reason=why, precision_reason=why)


def _same_geometry(model_dir: Path, planned: tuple[int, float], meta: ModelMeta) -> None:
    """The chunks were planned from model.json before the model loaded: a model.json that
    changed in between is refused rather than planned again."""
    if planned != (int(meta.tile_size), float(meta.mpp)):
        raise ModelError(
            f"{model_dir / 'model.json'}: changed while the slide was prepared (planned for "
            f"tile {planned[0]} at {planned[1]} mpp, loaded {meta.tile_size} at {meta.mpp}); "
            "rerun once the model folder stays unchanged"
        )


def slide_policy(
    machine: Machine,
    params: SegmentParams,
    facts: RunFacts,
    slide_path: str,
    slide: Slide,
    key: LevelKey | None,
) -> tuple[RunPolicy, JpegTiles | None]:
    """The run's policy, the slide's read level examined first where the policy may read it
    on the device (`key`: that level; None: not known yet), and the tiles it would read. A
    cluster's plan examines nothing: its bands read, and decide, on the workers."""
    tiles = None
    reads = None
    if key is not None and facts.place != CLUSTER and wants_slide_reads(machine, params):
        reads, tiles = slide_reads(slide_path, slide, key)
    policy = decide(machine, params, dataclasses.replace(facts, reads=reads))
    return policy, tiles if policy.read_device.value == GPU else None
