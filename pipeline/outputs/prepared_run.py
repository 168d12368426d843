"""What the outputs read of a prepared slide, as protocols.

`pipeline.prepare.PreparedSlide` is what a run hands over; outputs name only the fields they
read, and never import inference (tests/test_layers.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.roi import Roi
from wsi_segment.wsi.slide import Slide
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid
from wsi_segment.wsi.tissue import TissueMask

if TYPE_CHECKING:  # models.meta imports torch, which a run loads in the background
    from wsi_segment.models.meta import ModelMeta


class PendingThumbnail(Protocol):
    """A thumbnail being read in the background (pipeline.startup.Background)."""

    def result(self) -> np.ndarray: ...


class PreparedRun(Protocol):
    """What the outputs read of a prepared slide (pipeline.prepare.PreparedSlide).

    A protocol, not the class: outputs never import inference (tests/test_layers.py).
    """

    @property
    def slide_path(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def params(self) -> SegmentParams: ...
    @property
    def slide(self) -> Slide: ...
    @property
    def mpp(self) -> tuple[float, float]: ...
    @property
    def meta(self) -> ModelMeta: ...
    @property
    def model_dir(self) -> Path: ...
    @property
    def model_hash(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def tissue(self) -> TissueMask: ...
    @property
    def grid(self) -> TileGrid: ...
    @property
    def read_level(self) -> int: ...
    @property
    def level0_per_model(self) -> float: ...
    @property
    def output_shape(self) -> tuple[int, int]: ...
    @property
    def specs(self) -> Sequence[ChunkSpec]: ...
    @property
    def timings(self) -> dict[str, float]: ...  # write_outputs adds its own
    @property
    def read_stats(self) -> Mapping[str, int]: ...
    @property
    def engine(self) -> Mapping[str, Any]: ...  # EngineStats.report of a local run
    @property
    def read_device(self) -> Mapping[str, str]: ...  # read_device, read_device_reason
    @property
    def precision(self) -> Mapping[str, Any]: ...
    @property
    def run_policy(self) -> Mapping[str, Any]: ...  # pipeline.run_policy, with its reasons
    @property
    def rois(self) -> Sequence[Roi]: ...
    @property
    def missing_cores(self) -> Sequence[Roi]: ...
    @property
    def overlay_thumb(self) -> PendingThumbnail | None: ...
    @property
    def level0_per_output(self) -> float: ...
    @property
    def output_mpp(self) -> tuple[float, float]: ...
    @property
    def tiles_total(self) -> int: ...
