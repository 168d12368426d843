"""Load a model once per process and share it between the threads of that process.

A `ModelHandle` travels to Dask worker processes by pickling only its recipe (folder,
device, precision); the worker loads the weights on first use and keeps them for every
later chunk. The per-process memo is the only process-wide state: a cache of immutable
loaded models keyed by their recipe.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelHandle:
    """Recipe + (in this process) the loaded model and the lock serialising its forwards."""

    model_dir: str
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (the answer a cluster's trial pinned)
    _loaded: tuple[Any, threading.Lock] | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "device": self.device, "precision": self.precision}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loaded = None

    def get(self) -> tuple[Any, threading.Lock]:
        if self._loaded is None:
            self._loaded = load_for_process(self.model_dir, self.device, self.precision)
        return self._loaded

    @classmethod
    def with_model(cls, model: Any, model_dir: str, device: str, precision: str) -> ModelHandle:
        """A handle around an already loaded model (tests, the CLI's single process)."""
        return cls(model_dir, device, precision, (model, threading.Lock()))


@functools.lru_cache(maxsize=4)
def load_for_process(model_dir: str, device: str, precision: str) -> tuple[Any, threading.Lock]:
    """Load the bundle on the chosen device once per (process, recipe)."""
    from models.bundle import load_model

    model = load_model(Path(model_dir))
    model.to_device(device, precision if precision in ("fp32", "bf16") else "auto")
    model.eval()
    return model, threading.Lock()
