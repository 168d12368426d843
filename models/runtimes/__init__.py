"""Runtimes for the slide path's forward passes: torch (the model's own) or a compiled one.

- `runtime_decision`: which runtime a request runs in on a machine (pure, no torch: the run
  policy asks it before torch is imported).
- `open_runtime` / `RuntimeChoice`: open it for a loaded model, with its precision.
- `OpenVINOGraphs`: the compiled runtime (a new one is one module beside it).
- `TileGraph` / `Geometry`: the whole graph of a tile that a runtime compiles.

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
    "RuntimeChoice": "wsi_segment.models.runtimes.select",
    "open_runtime": "wsi_segment.models.runtimes.select",
}
__all__ = [
    "RUNTIME_CHOICES",
    "Geometry",
    "OpenVINOGraphs",
    "RuntimeChoice",
    "TileGraph",
    "open_runtime",
    "runtime_decision",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from wsi_segment.models.runtimes.decision import RUNTIME_CHOICES, runtime_decision
    from wsi_segment.models.runtimes.graph import Geometry, TileGraph
    from wsi_segment.models.runtimes.openvino_runtime import OpenVINOGraphs
    from wsi_segment.models.runtimes.select import RuntimeChoice, open_runtime
