"""The `TileGraph` torch runs, exported and compiled by OpenVINO for the CPU, cached on disk
(`runtimes.cache`): exported once per model and geometry, compiled once per batch, precision,
threads, streams and CPU. The precision is always set explicitly (OpenVINO's default on a CPU
with bf16 hardware is bf16). Each calling thread has its own infer request, in a stream of its
share of the cores, never pinned (other processes on the machine would pin the same ones).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_segment.errors import GraphNotExpressible, RuntimeUnavailable

from .cache import cpu_key, entry_lock, entry_name, load_entry, package_version, store_best_effort
from .tile_io import Geometry, ReducedOutputs, Tiles

if TYPE_CHECKING:
    from ..model_files import ModelSource

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_GRAPH_FORMAT = 1  # bump when TileGraph changes what it computes
# torch.export keeps its tracing state in process-wide slots: two exports at once (a batch's
# slides loading their model side by side) break each other
_EXPORT_LOCK = threading.Lock()
TELEMETRY_MODULE = "openvino_telemetry"


def import_openvino() -> Any:
    """`import openvino`, the only way this package imports it: with telemetry off, as its
    converter sends usage events (each from a new process) unless `openvino_telemetry` cannot
    be imported, and nothing of a run that reads patient slides may leave the machine."""
    if TELEMETRY_MODULE not in sys.modules:
        sys.modules[TELEMETRY_MODULE] = None  # type: ignore[assignment]  # import -> ImportError
    import openvino

    return openvino


@functools.cache
def openvino_core() -> Any:
    """The process's one (thread-safe) `openvino.Core`, never freed: each Core's CPU plugin
    swaps the thread's alternate signal stack, and Cores freed out of order left a freed one
    in place, on which the next signal crashed the process."""
    return import_openvino().Core()


@functools.cache
def _set_up_numpy_bridge() -> None:
    """Convert numpy arrays in OpenVINO's bindings before any inference (under a lock): the
    bindings set their numpy bridge up lazily, and two threads whose first inferences set it
    up at once deadlocked (one held its guard and waited for the GIL, the other the reverse)."""
    ov = import_openvino()
    for dtype in (np.uint8, np.float32):  # the dtypes an inference converts, both ways
        ov.Tensor(np.zeros((1,), dtype=dtype)).data.sum()


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None where it cannot be imported."""
    try:
        openvino = import_openvino()
    except Exception:  # a broken install fails in many ways; all mean "not here"
        return None
    return str(openvino.__version__)


def weights_digest(model: ModelSource) -> str:
    """The model's identity (sha256 of its files) or, for a model built in memory, a digest
    of its weights and metadata: what the cache key names the graph by."""
    if model.identity:
        return str(model.identity)
    digest = hashlib.sha256(repr(model.meta).encode())
    for name, tensor in sorted(model.network().state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "weights:" + digest.hexdigest()


class OpenVINOGraphs:
    """One model's compiled graphs, by (geometry, batch, streams), for one precision and
    thread count: the cores of the process they serve, never the loading thread's torch count
    (1 on a Dask worker). The network is built only to export a graph the cache lacks."""

    def __init__(
        self,
        model: ModelSource,
        precision: str,
        threads: int,
        cpu_flags: frozenset[str],
        cache_dir: Path,
    ) -> None:
        version = openvino_version()
        if version is None:
            raise RuntimeUnavailable("OpenVINO cannot be imported")
        self._model = model
        self.precision = precision
        self.threads = max(1, int(threads))
        self.cache_dir = cache_dir
        self._key = {
            "model": weights_digest(model),
            "openvino": version,
            "torch": package_version("torch"),
            "graph_format": _GRAPH_FORMAT,
        }
        self._cpu = cpu_key(cpu_flags)  # the instruction sets OpenVINO may use
        self._compiled: dict[tuple[Geometry, int, int], Any] = {}
        self._lock = threading.Lock()  # builds one graph at a time
        self._local = threading.local()  # each calling thread's infer requests
        self.cache_hits = 0  # compiled graphs loaded from the disk cache
        self.builds = 0  # compiled graphs built here

    def run(self, tiles: Tiles, geometry: Geometry, streams: int) -> ReducedOutputs:
        """The tile graph at `geometry` of uint8 host tiles (N, T, T, 3), read where they lie
        (no copy when contiguous), on a graph compiled for `streams` streams."""
        request = self._request(geometry, int(tiles.shape[0]), streams)
        out = request.infer([np.ascontiguousarray(tiles)], share_inputs=True)
        return ReducedOutputs(*(np.array(out[i]) for i in range(3)))

    def drop_compiled(self) -> None:
        """Forget the graphs compiled so far (the checks' at load) and this thread's requests
        for them: later calls compile, or load from the cache, what they run."""
        with self._lock:
            self._compiled.clear()
        self._local.requests = {}

    def compiled(self, geometry: Geometry, batch: int, streams: int) -> Any:
        """The openvino.CompiledModel of `geometry` for `batch` tiles on `streams` streams,
        from the disk cache or built: once per instance."""
        key = (geometry, batch, streams)
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = self._compile(*key)
            return self._compiled[key]

    def _request(self, geometry: Geometry, batch: int, streams: int) -> Any:
        """This thread's infer request for (geometry, batch, streams)."""
        requests: dict[tuple[Geometry, int, int], Any] = getattr(self._local, "requests", {})
        self._local.requests = requests
        key = (geometry, batch, streams)
        if key not in requests:
            compiled = self.compiled(*key)
            with self._lock:
                _set_up_numpy_bridge()
                requests[key] = compiled.create_infer_request()
        return requests[key]

    def entry_key(self) -> dict[str, object]:
        """The common part of these graphs' cache keys: what every compiled result depends on."""
        return {**self._key, "precision": self.precision, "threads": self.threads, "cpu": self._cpu}

    def _compile(self, geometry: Geometry, batch: int, streams: int) -> Any:
        """The compiled graph, loaded from the cache, else built and stored."""
        graph = entry_name(self._ir_key(geometry))
        key = {**self.entry_key(), "kind": "compiled", "graph": graph, "batch": batch}
        key["streams"] = streams
        config = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": streams,
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "ENABLE_CPU_PINNING": False,
        }
        core = openvino_core()
        with entry_lock(self.cache_dir, key):
            found = load_entry(self.cache_dir, key, ("blob",))
            if found:
                with contextlib.suppress(RuntimeError):  # written by this key, unreadable here
                    compiled = core.import_model(found["blob"].read_bytes(), "CPU", config)
                    self.cache_hits += 1
                    return compiled
            model = self.exported_graph(geometry)
            try:
                model.reshape([batch, geometry.tile, geometry.tile, 3])
                compiled = core.compile_model(model, "CPU", config)
            except RuntimeError as exc:
                raise RuntimeUnavailable(f"OpenVINO could not compile the graph: {exc}") from exc
            self.builds += 1

            def write_blob(scratch: Path) -> dict[str, Path]:
                blob = scratch / "compiled.blob"
                blob.write_bytes(compiled.export_model().getvalue())
                return {"blob": blob}

            store_best_effort(self.cache_dir, key, write_blob)
            return compiled

    def _ir_key(self, geometry: Geometry) -> dict[str, object]:
        """The cache key of the exported graph of `geometry` (any precision, threads, CPU)."""
        return {**self._key, "kind": "graph", "geometry": geometry.key()}

    def exported_graph(self, geometry: Geometry) -> Any:
        """The openvino.Model of `geometry` (batch free), from the cache or exported: what
        `_compile` compiles (benchmarks compile it in other layouts)."""
        ov, ir_key = import_openvino(), self._ir_key(geometry)
        with entry_lock(self.cache_dir, ir_key):
            found = load_entry(self.cache_dir, ir_key, ("xml", "bin"))
            if found:
                with contextlib.suppress(RuntimeError):  # whole by its manifest, unreadable here
                    return openvino_core().read_model(str(found["xml"]))
            converted = self._export(geometry)

            def write_ir(scratch: Path) -> dict[str, Path]:
                xml = scratch / "graph.xml"
                try:
                    ov.save_model(converted, str(xml), compress_to_fp16=False)
                except RuntimeError as exc:  # OpenVINO's for a failed write (a full disk)
                    raise OSError(f"OpenVINO could not write {xml}: {exc}") from exc
                return {"xml": xml, "bin": xml.with_suffix(".bin")}

            # compiled from the saved form only: a converted graph in memory compiles to other
            # bits (an ulp in the classifier's probabilities) than the same graph read back,
            # so a run that exported it and a run that found it cached would differ
            store_best_effort(self.cache_dir, ir_key, write_ir)
            found = load_entry(self.cache_dir, ir_key, ("xml", "bin"))
            if found:
                return openvino_core().read_model(str(found["xml"]))
            try:
                with tempfile.TemporaryDirectory() as tmp:  # the cache could not be written
                    return openvino_core().read_model(str(write_ir(Path(tmp))["xml"]))
            except OSError as exc:  # nowhere to write the graph: torch runs instead
                raise RuntimeUnavailable(f"no room to write OpenVINO's graph ({exc})") from exc

    def _export(self, geometry: Geometry) -> Any:
        """The tile graph at `geometry` exported by torch and converted by OpenVINO;
        `GraphNotExpressible` where either cannot."""
        import torch

        from .graph import TileGraph

        graph = TileGraph(self._model.network(), geometry)
        example = torch.zeros((2, geometry.tile, geometry.tile, 3), dtype=torch.uint8)
        batch = torch.export.Dim("batch", min=1, max=65536)
        try:
            with _EXPORT_LOCK, torch.no_grad():
                exported = torch.export.export(
                    graph.eval(), (example,), dynamic_shapes=({0: batch},)
                )
                return import_openvino().convert_model(exported)
        except Exception as exc:  # torch.export and the converter raise many kinds
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraphNotExpressible(f"{type(exc).__name__}: {first}") from exc


class OpenVINOExecutor:
    """The tile graph at `geometry` in OpenVINO (host tiles only), for a thread with
    `thread_cores` of the cores (None: all). A batch size's graph is compiled at its first
    batch, on the engine's compute thread, while the readers fill the first batches."""

    def __init__(
        self, graphs: OpenVINOGraphs, geometry: Geometry, thread_cores: int | None = None
    ) -> None:
        self.graphs, self.geometry = graphs, geometry
        threads = graphs.threads  # in streams of the thread's share (one stream: all of them)
        self.streams = threads // max(1, min(threads, thread_cores or threads))

    def run(self, tiles: Tiles) -> ReducedOutputs:
        return self.graphs.run(tiles, self.geometry, self.streams)
