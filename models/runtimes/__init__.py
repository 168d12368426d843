"""Runtimes for the slide path's forward passes: torch, or OpenVINO compiling the same graph.

`runtime_decision` decides (pure, no torch); `TileGraph` at a `Geometry` is the one inference
of a tile; `open_runtime(model, RuntimeSpec)` -> `OpenedRuntime` carries a run's decisions
out, and its executors (`TorchExecutor`, `OpenVINOExecutor`) run the graph. Entry points load
on first use.
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
