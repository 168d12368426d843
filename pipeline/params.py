"""Parameters of one slide segmentation run, validated once at the door.

Everything that changes the outputs is part of the fingerprint used for "up to date"
checks and written to summary.json; things that only change speed (threads, batch size,
progress display) are not.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_segment.errors import ConfigError
from wsi_segment.wsi.mpp import mpp_problem

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "openslide", "tiffslide")  # wsi.backends.BACKENDS, named without importing it
PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("auto", "torch", "openvino")  # models.runtimes.RUNTIME_CHOICES, without torch
TISSUE_MODES = ("auto", "all")  # all: no detection, the whole slide is tissue
READ_DEVICES = ("auto", "cpu", "gpu")  # pipeline.inference.read_device


@dataclass(frozen=True)
class RunOrigin:
    """How a run was started, for summary.json: `command` repeats it (an argv), `details`
    names the run (a flow run's id, deployment and parameters). Not a parameter: never
    part of the fingerprint."""

    command: tuple[str, ...]
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentParams:
    """Options of `wsi-segment SLIDE` (see the CLI help for each)."""

    model_dir: Path | None = None  # None: the demo model shipped in the package
    device: str = "auto"
    precision: str = "auto"  # auto: fixed by the model and machine (SegmentationModel.to_device)
    # What runs the forward passes: auto is OpenVINO on a CPU, torch on a GPU
    # (models.runtimes.runtime_decision)
    runtime: str = "auto"
    batch_size: int | None = None  # None: 16 on the CPU, 64 on a GPU (capped to its memory)
    mpp: float | None = None  # override of the slide's level-0 mpp
    output_downsample: int = 4
    overlap: int = 32  # model pixels shared by neighbouring tiles (centre-crop stitching)
    # A Dask chunk is chunk_tiles x chunk_tiles tiles; None: 4 on the CPU, 8 when a GPU is
    # expected (a batch never spans chunks, so 64-tile batches need 8 x 8 chunks).
    chunk_tiles: int | None = None
    gate: bool = True
    overwrite: bool = False
    backend: str = "auto"
    # Compute threads of the engine on the CPU (forward passes side by side, each with
    # cores // threads torch threads); None: 2. On a GPU one thread owns the model.
    threads: int | None = None
    # Decoder processes of the engine (pipeline.inference.engine); 0: its reader thread;
    # None: one per core but one (at most 16) when the model is on a GPU, 0 on the CPU.
    # With a Dask client: per band on each worker, the default decided there the same way
    # (pipeline.inference.band_task). Speed only.
    decoders: int | None = None
    # Writer threads of the engine (finish whole chunks side by side); None: the
    # cores the decoders leave, 1 to 4 (`run_writers`). Speed only.
    writers: int | None = None
    # Where the engine's tiles are decoded: "gpu" reads the slide's JPEG tiles straight
    # onto the model's device (one reader thread, no decoder processes) wherever it can,
    # "cpu" always uses the decoder processes, "auto" the device only on CUDA with nvJPEG
    # (pipeline.inference.read_device); on a Dask cluster each band decides on its worker.
    # Speed only.
    read_device: str = "auto"
    output_name: str | None = None  # default: the slide's file stem
    simplify_tolerance: float = 1.0  # output pixels; polygons simplified edge-to-edge
    ome_tiff: bool = False  # also write probabilities.ome.tif (QuPath opens it directly)
    tile_objects: bool = False  # also write tiles.geojson (per-tile probabilities for QuPath)
    tissue: str = "auto"  # auto: detect tissue on a thumbnail; all: the whole slide
    roi: Path | None = None  # QuPath GeoJSON: process (and report) only inside its polygons
    # What started the run (a Prefect flow run); None: this process's command line (sys.argv).
    origin: RunOrigin | None = None

    def __post_init__(self) -> None:
        _check_choice("device", self.device, DEVICES)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("runtime", self.runtime, RUNTIMES)
        _check_choice("tissue mode", self.tissue, TISSUE_MODES)
        _check_choice("read device", self.read_device, READ_DEVICES)
        if self.roi is not None and not isinstance(self.roi, Path):  # from JSON flow options
            object.__setattr__(self, "roi", Path(self.roi))
        if self.batch_size is not None:
            _check_range("batch size", self.batch_size, 1, 4096)
        _check_range("output downsample", self.output_downsample, 1, 64)
        if self.chunk_tiles is not None:
            _check_range("chunk tiles", self.chunk_tiles, 1, 64)
        if self.threads is not None:
            _check_range("threads", self.threads, 1, 256)
        if self.decoders is not None:
            _check_range("decoders", self.decoders, 0, 256)
        if self.writers is not None:
            _check_range("writers", self.writers, 1, 64)
        if self.overlap < 0 or self.overlap % 2:
            raise ConfigError(f"overlap must be an even number >= 0 (got {self.overlap})")
        if self.mpp is not None and (problem := mpp_problem(self.mpp)) is not None:
            raise ConfigError(f"--mpp {problem}")
        if self.simplify_tolerance < 0:
            raise ConfigError("simplify tolerance must be >= 0")

    def fingerprint_fields(self) -> dict[str, Any]:
        """The parameters that change outputs (speed-only knobs excluded).

        `precision` is the request, as `backend` is: `fp32` asks for the exact reference,
        while `auto` may run bf16 (decided by the model and the machine), so outputs made
        under one request never stand in for the other."""
        keep = (
            "mpp",
            "precision",
            "output_downsample",
            "overlap",
            "gate",
            "simplify_tolerance",
            "backend",
            "ome_tiff",
            "tile_objects",
        )
        fields = {name: getattr(self, name) for name in keep}
        if self.tissue != "auto":  # defaults left out: earlier runs keep their fingerprint
            fields["tissue"] = self.tissue
        if self.runtime != "torch":  # torch ran every earlier run: theirs stays theirs
            fields["runtime"] = self.runtime
        return fields

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model_dir"] = str(self.model_dir) if self.model_dir else None
        data["roi"] = str(self.roi) if self.roi else None
        del data["origin"]  # how the run started, not how it segments (summary.json: command)
        return data


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not (low <= value <= high):
        raise ConfigError(f"{name} must be an integer in [{low}, {high}] (got {value})")


def run_threads(requested: int | None, device_type: str) -> int:
    """Compute threads of a local engine on the CPU: `requested`, else 2. Forward passes
    side by side, each with cores // threads torch threads, waste no core in OpenMP
    barriers and let the reader's work use a core one of them would otherwise share. On a
    GPU one thread owns the model (the engine ignores more)."""
    if requested is not None:
        return requested
    return 2 if device_type == "cpu" else 1


def gpu_expected(device: str) -> bool:
    """Whether the run will use a GPU, known before torch is imported (planning runs while
    the model loads): `cuda`, or `auto` on a machine with an NVIDIA driver. A wrong guess
    only changes the chunk size, never the results (they do not depend on it)."""
    if device == "auto":
        return os.path.exists("/dev/nvidiactl")
    return device == "cuda"


def plan_chunk_tiles(params: SegmentParams) -> int:
    """Tiles per chunk side: the option, or 4 on the CPU and 8 when a GPU is expected."""
    if params.chunk_tiles is not None:
        return params.chunk_tiles
    return 8 if gpu_expected(params.device) else 4


def run_batch_size(requested: int | None, device_type: str) -> int:
    """Tiles per forward pass: the option, or 16 on the CPU and 64 on a GPU (where
    `SegmentationModel.batch_limit` then caps it to the device memory)."""
    if requested is not None:
        return requested
    return 64 if device_type == "cuda" else 16


def run_decoders(requested: int | None, device_type: str) -> int:
    """Decoder processes for a local run (0: the reader thread): `requested`, or on a GPU one
    per core but one, at most 16 (the consumer and writer need a core; decoding must keep
    up with the device), and 0 on the CPU, where the model bounds the run and its threads
    already use every core (the engine measured no faster there: docs/performance.md)."""
    return shared_decoders(requested, device_type, slides=1)


def shared_decoders(
    requested: int | None, device_type: str, slides: int, cores: int | None = None
) -> int:
    """Decoder processes of each of `slides` slides running at once in one process (a batch
    on one GPU machine): `requested`, else `run_decoders`' machine-wide count shared out,
    at least one each, so the slides in flight never spawn more decoders than the machine
    has cores. Their consumers feed one device, which needs the sum, not each share, to
    keep up. `cores`: the usable cores (default: this process's affinity)."""
    if requested is not None:
        return requested
    if device_type != "cuda":
        return 0
    machine = max(1, min(16, (cores if cores is not None else usable_cores()) - 1))
    return max(1, machine // max(1, slides))


WRITERS_MAX = 4


def run_writers(requested: int | None, decoders: int, cores: int | None = None) -> int:
    """Writer threads of an engine with `decoders` decoder processes: `requested`, or
    the cores the decoders leave, at least 1 and at most WRITERS_MAX. Writers only cost CPU
    when chunks arrive faster than one thread finishes them; beyond a few, polygon tracing
    and zarr's event loop (which hold the GIL) bound them, and more threads only compete
    with the consumer's threads for it. `cores`: the usable cores (default: this process's
    affinity)."""
    if requested is not None:
        return requested
    free = (cores if cores is not None else usable_cores()) - decoders
    return max(1, min(WRITERS_MAX, free))


def expected_decoders(params: SegmentParams) -> int:
    """The decoders a local run will use, known before torch is imported (the engine's
    decoders then start while the model loads; without them the reader thread's prefetcher
    does). A wrong guess only costs speed: `infer` decides with the loaded model."""
    device_type = "cuda" if gpu_expected(params.device) else "cpu"
    return run_decoders(params.decoders, device_type)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container or job may get fewer
    than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
