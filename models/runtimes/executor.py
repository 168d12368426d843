"""Executors: the one tile graph (`runtimes.graph.TileGraph`) run by a runtime.

An executor has one method, `run(tiles) -> ReducedOutputs`: uint8 tiles (N, T, T, 3), on the
host or the model's device, to the host tensors the slide path stores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from ..device import fit_batch_size
from ..reduction import HostCopier, ReducedOutputs
from .graph import Geometry

if TYPE_CHECKING:
    from ..segmentation_model import SegmentationModel
    from .openvino_runtime import OpenVINOGraphs

# torch's autocast dtype of each precision name (fp32: none)
TORCH_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class Executor(Protocol):
    """Runs a tile graph: what the engine's compute threads hold."""

    def run(self, tiles: torch.Tensor) -> ReducedOutputs: ...


class TorchExecutor:
    """The tile graph of `model` at `geometry` in torch, at `precision` (fp32 | bf16 | fp16)."""

    def __init__(self, model: SegmentationModel, geometry: Geometry, precision: str) -> None:
        self.graph = model.tile_graph(geometry, TORCH_DTYPES[precision]).eval()
        self.device = model.device
        self._host = HostCopier()  # pinned buffers kept from batch to batch on CUDA

    @torch.inference_mode()
    def run(self, tiles: torch.Tensor) -> ReducedOutputs:
        probs, labels, cls_probs = self.graph(tiles.to(self.device, non_blocking=True))
        return ReducedOutputs(*self._host.to_host([probs, labels, cls_probs]))


class OpenVINOExecutor:
    """The same tile graph compiled by OpenVINO (CPU tiles only)."""

    def __init__(self, graphs: OpenVINOGraphs, geometry: Geometry) -> None:
        self.graphs, self.geometry = graphs, geometry

    def run(self, tiles: torch.Tensor) -> ReducedOutputs:
        return self.graphs.run(tiles, self.geometry)


def whole_tile_labels(executor: Executor, tiles: torch.Tensor) -> torch.Tensor:
    """The slide path's labels (N, T, T) of whole uint8 tiles (N, 3, T, T): what the
    calibration and the checks compare (the executor's geometry must be `Geometry.whole`)."""
    return executor.run(tiles.permute(0, 2, 3, 1)).labels


def gpu_batch_cap(executor: TorchExecutor, tile: int, requested: int, probe: int = 2) -> int:
    """`requested`, capped to what the CUDA device's free memory holds: the working memory
    per tile measured by one probe run of `probe` blank tiles (peak allocated minus what was
    allocated before), with 20 % headroom (`fit_batch_size`). Run it under the model's lock."""
    dev = executor.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    executor.run(torch.zeros((probe, tile, tile, 3), dtype=torch.uint8))
    torch.cuda.synchronize(dev)
    per_tile = (torch.cuda.max_memory_allocated(dev) - before) / probe
    free, _total = torch.cuda.mem_get_info(dev)
    return fit_batch_size(requested, free, per_tile)
