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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loaded on first use: importing torch is most of a small run's start
    from wsi_segment.models.segmentation_model import SegmentationModel


@dataclass
class ModelHandle:
    """Recipe + (in this process) the loaded model and the lock serialising its forwards."""

    model_dir: str
    device: str = "auto"  # the run policy's (pipeline.run_policy): cpu | cuda
    precision: str = "auto"  # the request: auto | fp32 | bf16 | fp16 (or a pinned answer)
    # the run's model identity (summary.json): a worker that loads other bytes refuses them
    identity: str = ""
    runtime: str = "torch"  # the request: auto | torch | openvino (models.runtimes)
    # the run policy's (runtime, reason), opened as decided; None: the loader decides
    decided_runtime: tuple[str, str] | None = None
    # the run policy's (precision, reason) for that runtime, run as decided; None: the
    # loader decides
    decided_precision: tuple[str, str] | None = None
    # precision and runtime settled for a whole cluster from one worker's answer
    # (band_runner.settle_precision): every band runs them, whatever its worker would choose
    pinned: bool = False
    # the run policy's process cores (`RunPolicy.process_cores`): the threads of the model's
    # runtime (OpenVINO's); None: the loading thread's torch count (a model loaded outside a
    # run). A Dask worker starts with OMP_NUM_THREADS=1, so that count is no budget there
    cores: int | None = None
    _loaded: tuple[SegmentationModel, threading.Lock] | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_loaded"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loaded = None

    def recipe(self) -> tuple[object, ...]:
        """What the loaded model depends on: the decided runtime and precision by value
        alone, their reasons carried beside them (a reworded reason loads nothing again)."""
        decided = (_Decided.of(self.decided_runtime), _Decided.of(self.decided_precision))
        return (self.model_dir, self.device, self.precision, self.runtime, *decided, self.cores)

    def get(self) -> tuple[SegmentationModel, threading.Lock]:
        if self._loaded is None:
            loaded = load_for_process(
                self.model_dir,
                self.device,
                self.precision,
                self.runtime,
                self.decided_runtime,
                self.decided_precision,
                self.cores,
            )
            if self.identity and loaded[0].identity != self.identity:
                from wsi_segment.errors import ModelError

                raise ModelError(
                    f"{self.model_dir}: the model files changed during the run (this process "
                    "loaded other bytes than the run's model); rerun once they stay unchanged"
                )
            self._loaded = loaded
        return self._loaded

    @classmethod
    def with_model(
        cls,
        model: SegmentationModel,
        model_dir: str,
        device: str,
        precision: str,
        lock: threading.Lock | None = None,
        runtime: str = "torch",
        decided_runtime: tuple[str, str] | None = None,
        decided_precision: tuple[str, str] | None = None,
        cores: int | None = None,
    ) -> ModelHandle:
        """A handle around an already loaded model (tests, the CLI's single process).

        `lock`: the one `load_for_process` gave with the model; every handle of one model
        must share it, or slides run side by side (a batch) would not take turns on it."""
        held = lock if lock is not None else threading.Lock()
        identity = getattr(model, "identity", "")  # test and benchmark stand-ins have none
        decided = (decided_runtime, decided_precision)
        loaded = (model, held)
        return cls(model_dir, device, precision, identity, runtime, *decided, False, cores, loaded)


def load_for_process(
    model_dir: str,
    device: str,
    precision: str,
    runtime: str = "torch",
    decided_runtime: tuple[str, str] | None = None,
    decided_precision: tuple[str, str] | None = None,
    cores: int | None = None,
) -> tuple[SegmentationModel, threading.Lock]:
    """Load the bundle on the chosen device once per (process, recipe, state of its files):
    a long-lived process (a batch, a worker) loads again when model.json or the weights
    change on disk, so a cached model never stands in for files that are no longer there."""
    from wsi_segment.models.meta import model_files_stamp

    stamp = model_files_stamp(model_dir)
    decided = (_Decided.of(decided_runtime), _Decided.of(decided_precision))
    return _load_cached(model_dir, device, precision, runtime, *decided, cores, stamp)


@dataclass(frozen=True)
class _Decided:
    """A run policy's (value, reason) as handles compare it and the process cache keys it:
    by the value alone."""

    value: str
    reason: str = field(compare=False)

    @classmethod
    def of(cls, decided: tuple[str, str] | None) -> _Decided | None:
        return None if decided is None else cls(*decided)

    def pair(self) -> tuple[str, str]:
        return self.value, self.reason


@functools.lru_cache(maxsize=4)
def _load_cached(
    model_dir: str,
    device: str,
    precision: str,
    runtime: str,
    decided_runtime: _Decided | None,
    decided_precision: _Decided | None,
    cores: int | None,
    stamp: tuple[int, ...],
) -> tuple[SegmentationModel, threading.Lock]:
    from wsi_segment.models.bundle import load_model

    model = load_model(Path(model_dir))
    runs = decided_runtime.pair() if decided_runtime is not None else None
    precise = decided_precision.pair() if decided_precision is not None else None
    model.to_device(device, precision, runtime, runs, precise, cores)
    model.eval()
    return model, threading.Lock()


def model_device_type(model: SegmentationModel) -> str:
    """'cpu' or 'cuda': where a loaded model's weights live."""
    return str(model.device.type)
