"""Load a model once per process, open the runtime its plan names, and share both between the
threads of that process.

A `ModelHandle` pickles to its recipe only (folder, device, runtime spec); a process loads it
on first use, through a per-process cache keyed by the recipe's values.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import ModelError

if TYPE_CHECKING:  # loaded on first use: importing torch is most of a small run's start
    from wsi_segment.models.model_files import ModelSource
    from wsi_segment.models.runtimes.select import OpenedRuntime
    from wsi_segment.models.runtimes.spec import RuntimeSpec
    from wsi_segment.models.runtimes.tile_io import Executor, Geometry


@dataclass(frozen=True)
class LoadedModel:
    """A model in this process (its files, or a model built in memory), the runtime opened
    for it, and the lock serialising its forward passes where the plan says they take turns."""

    model: ModelSource
    runtime: OpenedRuntime
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (tile, requested) -> batch a CUDA device's memory holds, probed once per process
    batch_caps: dict[tuple[int, int], int] = field(default_factory=dict, compare=False)
    # (geometry, batch, thread cores) -> executor, built once per process: a CUDA graph is
    # captured once and its memory kept, not once per slide of a batch
    executors: dict[tuple[Geometry, int, int | None], Executor] = field(
        default_factory=dict, compare=False
    )

    def executor(self, geometry: Geometry, batch: int, thread_cores: int | None) -> Executor:
        """The model's tile graph at `geometry` for batches of `batch` tiles, in the opened
        runtime, for threads with `thread_cores` CPU cores each (None: a GPU's; one per
        process and key; its forward passes follow the model's lock)."""
        with self.lock:
            key = (geometry, batch, thread_cores)
            if key not in self.executors:
                self.executors[key] = self.runtime.executor(geometry, batch, thread_cores)
            return self.executors[key]

    def report(self) -> dict[str, object]:
        """summary.json `precision`: what the forward passes ran in, and why, and what this
        process's model has taken from the runtime cache so far (`runtime_cache`: the
        process's counts, which a batch's slides share, so each shows a cold start)."""
        cache = {**self.runtime.cache_record(), "network_built": self.model.network_built}
        return {**self.runtime.report(), "runtime_cache": cache}

    @property
    def device(self) -> str:
        """Where the forward passes run: torch's network's device ("cuda:0"), or "cpu"
        (OpenVINO's, without importing torch)."""
        network = self.runtime.network
        return str(network.device) if network is not None else "cpu"

    def batch_size(self, tile: int, requested: int) -> int:
        """`requested`; on CUDA capped to what the device's free memory holds (one probe
        run per process and size, under the lock)."""
        network = self.runtime.network
        if network is None or network.device.type != "cuda":
            return requested
        from wsi_segment.models.runtimes.executor import TorchExecutor, gpu_batch_cap
        from wsi_segment.models.runtimes.tile_io import Geometry

        key = (tile, requested)
        with self.lock:
            if key not in self.batch_caps:
                probe = TorchExecutor(network, Geometry.whole(tile), self.runtime.precision)
                self.batch_caps[key] = gpu_batch_cap(probe, tile, requested)
        return self.batch_caps[key]


@dataclass
class ModelHandle:
    """Recipe + (in this process) the loaded model; handles compare by their recipe."""

    model_dir: str
    device: str  # the plan's: cpu | cuda
    spec: RuntimeSpec  # the plan's runtime and precision (pipeline.run_policy.runtime_spec)
    # the run's model identity (summary.json): a worker that loads other bytes refuses them
    identity: str = ""
    _loaded: LoadedModel | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_loaded"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loaded = None

    def get(self) -> LoadedModel:
        """This process's model and runtime for the recipe, reporting this handle's reasons."""
        if self._loaded is None:
            loaded = load_for_process(self.model_dir, self.device, self.spec)
            loaded = dataclasses.replace(loaded, runtime=loaded.runtime.worded(self.spec))
            if self.identity and loaded.model.identity != self.identity:
                raise ModelError(
                    f"{self.model_dir}: the model files changed during the run (this process "
                    "loaded other bytes than the run's model); rerun once they stay unchanged"
                )
            self._loaded = loaded
        return self._loaded

    @classmethod
    def of(cls, loaded: LoadedModel, model_dir: str, device: str, spec: RuntimeSpec) -> ModelHandle:
        """A handle around an already loaded model (prepare, tests): every handle of one
        loaded model shares its lock, so slides run side by side take turns on it."""
        return cls(model_dir, device, spec, loaded.model.identity, loaded)


class ProcessModels:
    """The models this process loaded, by recipe (`RuntimeSpec.load_key`) and the state of
    the files (a long-lived process, a batch or a worker, loads again when model.json or
    the weights change on disk), the `size` most recently used kept. One load at a time: a
    batch starts its first slides together, each loading in its own thread, and they wait
    for one load and share it (its weights and its lock), not one copy each."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._loaded: OrderedDict[tuple[object, ...], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_dir: str, device: str, spec: RuntimeSpec) -> LoadedModel:
        from wsi_segment.models.meta import model_files_stamp

        key = (model_dir, device, spec.load_key(), model_files_stamp(model_dir))
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _load(model_dir, device, spec)
                while len(self._loaded) > self._size:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return self._loaded[key]


PROCESS_MODELS = ProcessModels()


def load_for_process(model_dir: str, device: str, spec: RuntimeSpec) -> LoadedModel:
    """The bundle loaded on `device` with `spec`'s runtime opened, once per process and
    recipe (`ProcessModels`)."""
    return PROCESS_MODELS.get(model_dir, device, spec)


def _load(model_dir: str, device: str, spec: RuntimeSpec) -> LoadedModel:
    from wsi_segment.models.model_files import ModelFiles
    from wsi_segment.models.runtimes.select import open_runtime

    files = ModelFiles(Path(model_dir), device)
    return LoadedModel(files, open_runtime(files, spec))
