"""The benchmarks' way to a loaded model's executors, as a run gets them: the plan decided
for the options on this machine (`pipeline.run_policy.decide`, `runtime_spec`), the runtime
opened as it says (`models.runtimes.select.open_runtime`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsi_segment.models.bundle import load_bundle
from wsi_segment.models.model_files import BuiltModel
from wsi_segment.models.runtimes.select import OpenedRuntime, open_runtime
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.pipeline.inference.slide_plan import slide_grid
from wsi_segment.pipeline.inference.tile_reader import tile_geometry
from wsi_segment.pipeline.machine import probe_machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.run_policy import RunFacts, decide, runtime_spec


def opened(
    model: SegmentationModel | str | Path,
    device: str = "cpu",
    precision: str = "auto",
    runtime: str = "auto",
    overlap: int = SegmentParams().overlap,
) -> tuple[SegmentationModel, OpenedRuntime]:
    """The model (loaded from its folder if a path) on the plan's device, and its runtime
    opened at the plan's precision for `--device device --precision precision --runtime
    runtime --overlap overlap` (the geometry OpenVINO's check runs: the slide's)."""
    options = SegmentParams(device=device, precision=precision, runtime=runtime, overlap=overlap)
    plan = decide(probe_machine(), options, RunFacts())
    source = BuiltModel(model) if isinstance(model, SegmentationModel) else load_bundle(Path(model))
    network = source.network().to_device(plan.device.value)
    geometry = tile_geometry(slide_grid(int(network.meta.tile_size), options), options.gate)
    return network, open_runtime(source, runtime_spec(plan, geometry))


def reduced(
    model: SegmentationModel,
    runtime: OpenedRuntime,
    tiles: Any,
    margin: int,
    core: int,
    downsample: int,
) -> Any:
    """`runtime`'s outputs of uint8 tiles (N, 3, T, T), numpy or a tensor, at that geometry
    (gate on)."""
    geometry = Geometry(int(tiles.shape[-1]), margin, core, downsample, True)
    nhwc = (
        np.transpose(tiles, (0, 2, 3, 1))
        if isinstance(tiles, np.ndarray)
        else tiles.permute(0, 2, 3, 1)
    )
    return runtime.executor(geometry, len(tiles)).run(nhwc)
