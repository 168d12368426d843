"""Runtimes for the slide path's forward passes: torch (the model's own) or a compiled one.

- `runtime_decision`: which runtime a request runs in on a machine (pure).
- `open_runtime` / `RuntimeChoice`: open it for a loaded model, with its precision.
- `RUNTIMES`: the compiled runtimes by name (a new one is one module and one line here).
- `TileGraph` / `Geometry`: the whole graph of a tile that a runtime compiles.
"""

from __future__ import annotations

from types import MappingProxyType

from .decision import RUNTIME_CHOICES, runtime_decision
from .graph import Geometry, TileGraph
from .openvino_runtime import OpenVINOGraphs
from .select import RuntimeChoice, open_runtime

RUNTIMES = MappingProxyType({"openvino": OpenVINOGraphs})

__all__ = [
    "RUNTIMES",
    "RUNTIME_CHOICES",
    "Geometry",
    "OpenVINOGraphs",
    "RuntimeChoice",
    "TileGraph",
    "open_runtime",
    "runtime_decision",
]
