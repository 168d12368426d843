"""What a run's plan hands `models/` to carry out, as plain values: torch-free, so a run
decides and builds it on its main thread while torch is imported in the background."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .decision import BF16_IF_CALIBRATED
from .tile_io import Geometry


@dataclass(frozen=True)
class RuntimeSpec:
    """Specs that differ only in their reasons are equal: a reworded reason opens nothing again."""

    runtime: str  # torch | openvino
    precision: str  # fp32 | bf16 | fp16 | bf16-if-calibrated, for that runtime
    # where OpenVINO's fp32 check runs (`select.check_geometry`); not compared: a process opens
    # a model once for all its slides' geometries (one copy, one lock), checked at the first's
    geometry: Geometry = field(compare=False)
    fallback: str  # torch's precision should OpenVINO not run the model
    threads: int  # OpenVINO's: the cores of the process it serves
    cpu_flags: frozenset[str]  # the machine's (OpenVINO's cache keys name them)
    by_name: bool  # OpenVINO asked for by name: a model it cannot export is refused
    cuda_graphs: bool  # torch on CUDA runs each batch as a replay of a captured graph
    runtime_reason: str = field(compare=False)
    precision_reason: str = field(compare=False)
    fallback_reason: str = field(compare=False)
    # the bf16 calibration's numbers the plan decided `precision` from (reported with it);
    # None: the precision needed none, or the loader obtains it (bf16-if-calibrated)
    calibration: Mapping[str, Any] | None = field(compare=False)

    def load_key(self) -> RuntimeSpec:
        """This spec as far as the runtime it opens depends on it: what a process's models
        are cached by. A precision decided from a kept bf16 verdict opens what the load that
        kept it opened, and torch takes no threads, so a batch's later slides (planned from the
        first's kept verdict) and a worker whose share of the cores changed reuse the model
        loaded, not load a second copy."""
        settled = BF16_IF_CALIBRATED if self.calibration is not None else self.precision
        if self.runtime == "torch":  # its fallback is its precision; it takes no threads
            return dataclasses.replace(self, precision=settled, fallback=settled, threads=0)
        return dataclasses.replace(self, precision=settled)
