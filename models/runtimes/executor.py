"""torch's executors of the one tile graph (`runtimes.graph.TileGraph`), eager or captured as
a CUDA graph: `run` takes uint8 tiles (N, T, T, 3), host numpy or on the model's device, to
the host arrays the slide path stores (`runtimes.tile_io.ReducedOutputs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..device import fit_batch_size
from ..reduction import HostCopier
from .graph import TileGraph
from .tile_io import Geometry, ReducedOutputs, Tiles

if TYPE_CHECKING:
    from ..segmentation_model import SegmentationModel

# torch's autocast dtype of each precision name (fp32: none)
TORCH_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


class TorchExecutor:
    """The tile graph of `model` at `geometry` in torch, at `precision` (fp32 | bf16 | fp16),
    on `threads` torch threads in the calling thread (None: as that thread has them)."""

    def __init__(
        self,
        model: SegmentationModel,
        geometry: Geometry,
        precision: str,
        threads: int | None = None,
    ) -> None:
        self.graph = TileGraph(model, geometry, TORCH_DTYPES[precision]).eval()
        self.device, self.threads = model.device, threads
        self._host = HostCopier()  # pinned buffers kept from batch to batch on CUDA

    @torch.inference_mode()
    def run(self, tiles: Tiles) -> ReducedOutputs:
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # a compute thread's share of the cores
        # a host array's memory is shared, not copied (`torch.as_tensor`)
        outputs = self.graph(torch.as_tensor(tiles).to(self.device, non_blocking=True))
        return ReducedOutputs(*(t.numpy() for t in self._host.to_host(outputs)))


class CudaGraphExecutor:
    """`eager`'s tile graph captured once as a CUDA graph of `batch` tiles, replayed per batch:
    eagerly a batch is a few hundred kernel launches from a thread sharing the GIL with the
    stager and the writers; a replay is one. The engine hands every batch at `batch` tiles
    (the `Stager` zero-fills a short one), so one graph, and the same kernels, serve every
    batch of a run; another size is refused."""

    def __init__(self, eager: TorchExecutor, batch: int) -> None:
        self._eager, self.batch, self.device = eager, batch, eager.device
        self._host = HostCopier()
        self._captured: tuple[torch.cuda.CUDAGraph, torch.Tensor, list[torch.Tensor]] | None = None

    @torch.inference_mode()
    def run(self, tiles: Tiles) -> ReducedOutputs:
        if len(tiles) != self.batch:
            raise ValueError(f"a CUDA graph of {self.batch} tiles was handed {len(tiles)}")
        if self._captured is None:
            self._captured = self._capture(tuple(tiles.shape[1:]))
        graph, tiles_in, outputs = self._captured
        tiles_in.copy_(torch.as_tensor(tiles), non_blocking=True)
        graph.replay()
        return ReducedOutputs(*(t.numpy() for t in self._host.to_host(outputs)))

    def _capture(
        self, tile_shape: tuple[int, ...]
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, list[torch.Tensor]]:
        """The graph, its input and its outputs (reused by every replay), after two eager passes
        on a side stream that settle cuDNN's algorithms and the allocator's workspaces outside
        the capture, as CUDA graphs require."""
        module = self._eager.graph
        with torch.cuda.device(self.device):
            tiles_in = torch.zeros((self.batch, *tile_shape), dtype=torch.uint8, device=self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    module(tiles_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the stager and the device reader keep copying on their own
            # streams meanwhile; only this thread's calls are checked
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = list(module(tiles_in))
        return graph, tiles_in, outputs


def gpu_batch_cap(executor: TorchExecutor, tile: int, requested: int) -> int:
    """`requested`, capped to what the CUDA device's free memory holds, by the peak working
    memory per tile of a probe run on blank tiles (`fit_batch_size`). Run it under the model's
    lock."""
    dev, probe = executor.device, 2
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    executor.run(torch.zeros((probe, tile, tile, 3), dtype=torch.uint8))
    torch.cuda.synchronize(dev)
    per_tile = (torch.cuda.max_memory_allocated(dev) - before) / probe
    free, _total = torch.cuda.mem_get_info(dev)
    return fit_batch_size(requested, free, per_tile)
