"""Parameters of one slide segmentation run, validated once at the door.

Everything that changes the outputs is part of the fingerprint used for "up to date"
checks and written to summary.json; things that only change speed (threads, batch size,
progress display) are not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_segment.errors import ConfigError
from wsi_segment.models.runtimes.decision import RUNTIME_CHOICES
from wsi_segment.pipeline.output_files import output_options
from wsi_segment.wsi.backends import backend_choices
from wsi_segment.wsi.mpp import mpp_problem
from wsi_segment.wsi.region_reader import READ_LEVEL_TOLERANCES
from wsi_segment.wsi.shown_path import not_utf8, utf8_shown
from wsi_segment.wsi.tiling import check_chunk_tiles

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
TISSUE_MODES = ("auto", "all")  # all: no detection, the whole slide is tissue
RUNTIMES = RUNTIME_CHOICES  # the CLI's --runtime choices: the decision's own names
READ_DEVICES = ("auto", "cpu", "gpu")  # pipeline.run_policy
READ_LEVELS = tuple(READ_LEVEL_TOLERANCES)  # serving | finer (wsi.region_reader.choose_level)


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
    # The speed knobs' defaults (None, "auto") are decided by the run policy
    # (pipeline.run_policy) from the machine; each is recorded there with its reason.
    precision: str = "auto"  # auto: decided from the machine and the model (pipeline.run_policy)
    # What runs the forward passes: auto is OpenVINO on a CPU, torch on a GPU
    # (models.runtimes.decision.runtime_decision)
    runtime: str = "auto"
    batch_size: int | None = None  # None: 16 on the CPU, 64 on a GPU (capped to its memory)
    mpp: float | None = None  # override of the slide's level-0 mpp
    output_downsample: int = 4
    overlap: int = 32  # model pixels shared by neighbouring tiles (centre-crop stitching)
    # A chunk is chunk_tiles x chunk_tiles tiles; None: 4 on the CPU, 8 on a GPU. Speed only:
    # the zarr chunks are wsi.tiling.STORE_TILES tiles whatever it is (a divisor or a multiple).
    chunk_tiles: int | None = None
    gate: bool = True
    overwrite: bool = False
    backend: str = "auto"
    # Compute threads of the engine on the CPU (forward passes side by side, each with
    # cores // threads of the cores: torch threads or an OpenVINO stream); None: 2. On a GPU one thread owns the model.
    threads: int | None = None
    # Decoder processes of the engine (pipeline.inference.engine); 0: its reader thread;
    # None: half the cores (at most 16) when the model is on a GPU, 0 on the CPU.
    # With a Dask client: per band on each worker, the default decided there the same way
    # (pipeline.inference.band_task). Speed only.
    decoders: int | None = None
    # Writer threads of the engine (finish whole chunks side by side); None: the
    # cores the decoders leave, 1 to 4. Speed only.
    writers: int | None = None
    # Processes that trace the writers' polygons (the same function, out of the GIL's way);
    # 0: each writer traces in its own thread; None: one per writer on a GPU, 0 on the CPU.
    # Speed only.
    polygon_processes: int | None = None
    # Where the engine's tiles are decoded: "gpu" reads the slide's JPEG tiles straight
    # onto the model's device (one reader thread, no decoder processes) wherever it can,
    # "cpu" always uses the decoder processes, "auto" the device only on CUDA with nvJPEG
    # (pipeline.run_policy); on a Dask cluster each band decides on its worker.
    # Speed only.
    read_device: str = "auto"
    # torch on CUDA runs each batch as a replay of the tile graph captured once as a CUDA
    # graph (one launch, not hundreds from Python); False: eagerly. Speed only.
    cuda_graphs: bool = True
    output_name: str | None = None  # default: the slide's file stem
    simplify_tolerance: float = 1.0  # output pixels; polygons simplified edge-to-edge
    # The optional files to write too, by their option in `pipeline.output_files.OUTPUT_FILES`
    # (ome_tiff: probabilities.ome.tif; tile_objects: tiles.geojson). In dicts (`as_dict`,
    # a flow's options, summary.json) each is its own true/false key.
    extra_outputs: frozenset[str] = frozenset()
    tissue: str = "auto"  # auto: detect tissue on a thumbnail; all: the whole slide
    # Which pyramid level is read: "finer", never a level coarser than the model's pixels (a
    # 40x scan at 0.252 um/px is decoded from level 0 for a 1 um/px model), or "serving", the
    # coarsest at most 2 % coarser (its 4x level, upsampled 1.008x): 8-13x fewer storage
    # tiles, but not the same labels for every model (docs/slides.md, "The level read")
    read_level: str = "finer"
    roi: Path | None = None  # QuPath GeoJSON: process (and report) only inside its polygons
    # What started the run (a Prefect flow run); None: this process's command line (sys.argv).
    origin: RunOrigin | None = None

    def __post_init__(self) -> None:
        _check_choice("device", self.device, DEVICES)
        _check_choice("backend", self.backend, backend_choices())
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("runtime", self.runtime, RUNTIMES)
        _check_choice("tissue mode", self.tissue, TISSUE_MODES)
        _check_choice("read device", self.read_device, READ_DEVICES)
        _check_choice("read level", self.read_level, READ_LEVELS)
        if self.roi is not None and not isinstance(self.roi, Path):  # from JSON flow options
            object.__setattr__(self, "roi", Path(self.roi))
        for option, path in (("--model", self.model_dir), ("--roi", self.roi)):
            if path is not None and not_utf8(str(path)):
                raise ConfigError(
                    f"{option} {utf8_shown(str(path))}: the path is not valid UTF-8 (a name "
                    "written in another encoding, such as Latin-1), which summary.json could not "
                    "record; rename it in UTF-8 and pass it again"
                )
        object.__setattr__(self, "extra_outputs", frozenset(self.extra_outputs))
        for option in sorted(self.extra_outputs):
            _check_choice("optional output", option, tuple(output_options()))
        if self.batch_size is not None:
            _check_range("batch size", self.batch_size, 1, 4096)
        _check_range("output downsample", self.output_downsample, 1, 64)
        if self.chunk_tiles is not None:
            _check_range("chunk tiles", self.chunk_tiles, 1, 64)
            check_chunk_tiles(self.chunk_tiles)
        if self.threads is not None:
            _check_range("threads", self.threads, 1, 256)
        if self.decoders is not None:
            _check_range("decoders", self.decoders, 0, 256)
        if self.writers is not None:
            _check_range("writers", self.writers, 1, 64)
        if self.polygon_processes is not None:
            _check_range("polygon processes", self.polygon_processes, 0, 64)
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
        )
        # which files the run writes: a rerun that asks for one is not "up to date" with one
        # that did not
        fields = {name: getattr(self, name) for name in keep} | self.output_flags()
        if self.tissue != "auto":  # defaults left out: earlier runs keep their fingerprint
            fields["tissue"] = self.tissue
        if self.read_level != "finer":  # the read of every earlier run
            fields["read_level"] = self.read_level
        if self.runtime != "torch":  # torch ran every earlier run: theirs stays theirs
            fields["runtime"] = self.runtime
        return fields

    @property
    def read_tolerance(self) -> float:
        """How much coarser than the model's pixels the read level may be (`read_level`)."""
        return READ_LEVEL_TOLERANCES[self.read_level]

    def output_flags(self) -> dict[str, bool]:
        """Each optional output's option (the registry's order): whether it is asked for."""
        return {option: option in self.extra_outputs for option in output_options()}

    def as_dict(self) -> dict[str, Any]:
        """The parameters as JSON-ready data (summary.json, a flow's options): each optional
        output as its own true/false key where `extra_outputs` stands; `from_dict` reads it."""
        data: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if key == "extra_outputs":
                data.update(self.output_flags())
            else:
                data[key] = value
        data["model_dir"] = str(self.model_dir) if self.model_dir else None
        data["roi"] = str(self.roi) if self.roi else None
        del data["origin"]  # how the run started, not how it segments (summary.json: command)
        return data

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SegmentParams:
        """SegmentParams from `as_dict`'s form (a flow's JSON options): an optional output's
        key (`"ome_tiff": true`) asks for it. Unknown keys raise TypeError, as the class
        does."""
        fields = {k: v for k, v in values.items() if k not in output_options()}
        asked = {option for option in output_options() if values.get(option)}
        fields["extra_outputs"] = frozenset(fields.get("extra_outputs", ())) | asked
        return cls(**fields)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not (low <= value <= high):
        raise ConfigError(f"{name} must be an integer in [{low}, {high}] (got {value})")
