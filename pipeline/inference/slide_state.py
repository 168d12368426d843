"""The state of one slide run: what `prepare` hands to `infer` and `finish`, and the result.

Plain data (plus the background readers of a local run), kept apart from the stages in
`pipeline.segment` so each module stays small.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_segment.pipeline.inference.chunk_prefetch import ChunkPrefetcher
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.startup import Background
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.roi import Roi
from wsi_segment.wsi.slide import Slide
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid
from wsi_segment.wsi.tissue import TissueMask

if TYPE_CHECKING:  # models.meta imports torch, which a run loads in the background
    from wsi_segment.models.meta import ModelMeta


@dataclass
class SlideResult:
    """What one slide run ended with (the batch table is made of these)."""

    slide: str
    status: str  # "done" | "up-to-date" | "failed"
    out_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


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
    level0_per_model: float
    read_level: int
    output_shape: tuple[int, int]  # (H, W) output pixels
    chunk_out: int  # output pixels per chunk side (= zarr chunk side)
    specs: list[ChunkSpec]
    timings: dict[str, float] = field(default_factory=dict)
    # Backend for chunk reads (tiffslide when it reads this slide's pixels identically and
    # cheaper, see `pipeline.inference.chunk_job.fast_read_backend`); None: the slide's own backend.
    read_backend: str | None = None
    # Local runs: chunk images being read in the background since planning (never pickled).
    prefetch: ChunkPrefetcher | None = None
    # Local runs on the device engine: its decoders, started after planning (never pickled);
    # `infer` hands them to `run_engine`, which closes them.
    decode_pool: DecodePool | None = None
    # Local runs: the overlay's thumbnail, read on the core the model load leaves free.
    overlay_thumb: Background[np.ndarray] | None = None
    # Local runs: storage tiles decoded / served again from memory (wsi.tile_reuse).
    read_stats: dict[str, int] = field(default_factory=dict)
    # What the forward passes ran in and why (SegmentationModel.precision_report).
    precision: dict[str, Any] = field(default_factory=dict)
    # --roi: the regions (level-0 slide pixels) outputs are clipped to and reported per.
    rois: list[Roi] = field(default_factory=list)

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
            with contextlib.suppress(BaseException):  # finish() reports its errors
                self.overlay_thumb.result()

    def take_decode_pool(self) -> DecodePool | None:
        """The early decoders, handed over to whoever runs the engine (which closes them)."""
        pool, self.decode_pool = self.decode_pool, None
        return pool

    @property
    def out_dir(self) -> Path:
        return self.out_root / self.name

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
