"""Runtimes for the slide path's forward passes: torch (the model's own) or a compiled one.

- `runtime_decision`: which runtime a request runs in on a machine (pure, no torch: the run
  policy asks it before torch is imported).
- `TileGraph` / `Geometry`: the one inference of a tile, which every runtime executes.
- `open_runtime(model, RuntimeSpec)` -> `OpenedRuntime`: carry out a run's decisions for a
  loaded model (its checks and the bf16 verdict), whose `executor(geometry)` runs the graph.
- `TorchExecutor`, `OpenVINOExecutor` (over `OpenVINOGraphs`, compiled and cached): the
  executors; a new runtime is one executor beside them.

The entry points load on first use, so importing the decision costs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.lazy_exports import lazy_exports

_EXPORTS = {
    "RUNTIME_CHOICES": "wsi_segment.models.runtimes.decision",
    "runtime_decision": "wsi_segment.models.runtimes.decision",
    "Geometry": "wsi_segment.models.runtimes.graph",
    "TileGraph": "wsi_segment.models.runtimes.graph",
    "OpenVINOGraphs": "wsi_segment.models.runtimes.openvino_runtime",
    "Executor": "wsi_segment.models.runtimes.executor",
    "TorchExecutor": "wsi_segment.models.runtimes.executor",
    "OpenVINOExecutor": "wsi_segment.models.runtimes.executor",
    "OpenedRuntime": "wsi_segment.models.runtimes.select",
    "RuntimeSpec": "wsi_segment.models.runtimes.spec",
    "open_runtime": "wsi_segment.models.runtimes.select",
}
__all__ = [
    "RUNTIME_CHOICES",
    "Executor",
    "Geometry",
    "OpenVINOExecutor",
    "OpenVINOGraphs",
    "OpenedRuntime",
    "RuntimeSpec",
    "TileGraph",
    "TorchExecutor",
    "open_runtime",
    "runtime_decision",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from wsi_segment.models.runtimes.decision import RUNTIME_CHOICES, runtime_decision
    from wsi_segment.models.runtimes.executor import Executor, OpenVINOExecutor, TorchExecutor
    from wsi_segment.models.runtimes.graph import Geometry, TileGraph
    from wsi_segment.models.runtimes.openvino_runtime import OpenVINOGraphs
    from wsi_segment.models.runtimes.select import OpenedRuntime, open_runtime
    from wsi_segment.models.runtimes.spec import RuntimeSpec
