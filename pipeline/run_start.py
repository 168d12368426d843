"""The first step of `prepare`: decide the run's policy, then start what works in the
background while the calling thread detects tissue and plans the chunks.

The policy (`pipeline.run_policy`) is decided once here, from the machine, the options and
the slide's read level; the early readers (`EarlyReaders`) then start as it says, and a
background thread loads the model and builds the engine's executor from the same plan
(`ReadyModel`), so that importing torch, opening the runtime, a GPU's batch probe and
decoding the first tiles all overlap the planning.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.errors import ModelError
from wsi_segment.models.model_files import ModelFiles
from wsi_segment.pipeline.cancellation import CancelToken
from wsi_segment.pipeline.early_readers import EarlyReaders
from wsi_segment.pipeline.inference.model_handle import ModelHandle, load_for_process
from wsi_segment.pipeline.inference.read_sources import LevelKey, read_level_and_scale, slide_reads
from wsi_segment.pipeline.inference.slide_plan import slide_grid
from wsi_segment.pipeline.inference.tile_reader import tile_geometry
from wsi_segment.pipeline.machine import Machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare_inputs import ModelFolder, OpenedSlide
from wsi_segment.pipeline.read_policy import GPU
from wsi_segment.pipeline.run_policy import (
    CLUSTER,
    ExecutionPlan,
    RunFacts,
    decide_for_model,
    runtime_spec,
    settled,
    wants_slide_reads,
)
from wsi_segment.pipeline.threads import Background
from wsi_segment.wsi.slide import Slide

if TYPE_CHECKING:
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.models.runtimes.spec import RuntimeSpec
    from wsi_segment.pipeline.inference.engine import TileExecutor
    from wsi_segment.wsi.raw_tiles import JpegTiles


@dataclass(frozen=True)
class ReadyModel:
    """What the background load hands the run: the model's handle and metadata, the plan
    settled with the bf16 verdict the load obtained, and the engine's executor built as that
    plan says (a cluster's plan: None, its bands build theirs on their workers)."""

    handle: ModelHandle
    meta: ModelMeta
    policy: ExecutionPlan
    executor: TileExecutor | None


@dataclass(frozen=True)
class RunStart:
    """The run's policy and what it started: the model's load and its executor's build in a
    background thread, and the early readers (none without `early`)."""

    policy: ExecutionPlan
    read_tiles: JpegTiles | None  # the read level's JPEG tiles when read on the device
    spec: RuntimeSpec  # what the plan's runtime opens (a cluster's: on its workers)
    loader: Background[ReadyModel]
    readers: EarlyReaders

    @classmethod
    def begin(
        cls,
        opened: OpenedSlide,
        model: ModelFolder,
        params: SegmentParams,
        machine: Machine,  # what runs the engine: this one, or a Dask cluster's workers
        facts: RunFacts,  # where it runs, how many slides at once (the slide's facts: here)
        early: bool,  # start the plan's readers while the model loads
    ) -> RunStart:
        """Decide the policy, then start the model's load and the readers it names."""
        key = read_level_and_scale(
            opened.slide, opened.mpp[0], model.geometry[1], params.read_tolerance
        )
        facts, tiles = slide_facts(machine, params, facts, opened.path, opened.slide, key)
        policy = decide_for_model(machine, params, facts, str(model.path))
        tiles = tiles if policy.read_device.value == GPU else None
        geometry = tile_geometry(slide_grid(model.geometry[0], params), params.gate)
        spec = runtime_spec(policy, geometry)
        ready = _files_for_cluster if policy.place == CLUSTER else _ready_here
        loader = Background(ready, model, policy, spec)
        try:
            readers = EarlyReaders.start(
                policy if early else None, machine, opened.path, opened.slide, params
            )
        except BaseException:  # e.g. a script without a main guard: no decoders may start
            _wait_ignoring_errors(loader)
            raise
        return cls(policy, tiles, spec, loader, readers)

    def loaded_model(self, cancel: CancelToken) -> ReadyModel:
        """The background load's product once it ends; `cancel` is checked after the wait."""
        ready = self.loader.result()
        cancel.check()
        return ready

    def stop(self) -> None:
        """After an error: stop the readers and wait for the load to end."""
        self.readers.close()
        _wait_ignoring_errors(self.loader)


def _wait_ignoring_errors(loader: Background[ReadyModel]) -> None:
    """Wait for the model's load to end, whatever it raises: never leave a thread importing
    torch behind an error (a process that exits under it may crash with SIGSEGV)."""
    with contextlib.suppress(BaseException):
        loader.result()


def _ready_here(model: ModelFolder, policy: ExecutionPlan, spec: RuntimeSpec) -> ReadyModel:
    """A local run's model loaded (once per process: `load_for_process`) with the plan's
    runtime opened, the plan settled with the bf16 verdict the load obtained, and the
    engine's executor built at the plan's geometry and sizes (on a GPU the batch cap's probe
    pass) while the caller plans the slide. OpenVINO's batch graph and a CUDA graph are
    compiled or captured at the first batch (docs/architecture.md)."""
    from wsi_segment.pipeline.inference.engine import EngineSizes, build_executor

    folder, device = str(model.path), policy.device.value
    loaded = load_for_process(folder, device, spec)
    _same_geometry(model.path, model.geometry, loaded.model.meta)
    handle = ModelHandle.of(loaded, folder, device, spec)
    policy = settled(policy, loaded.runtime.runtime, loaded.runtime.calibration)
    executor = build_executor(handle, spec.geometry, EngineSizes.of(policy))
    return ReadyModel(handle, loaded.model.meta, policy, executor)


def _files_for_cluster(model: ModelFolder, policy: ExecutionPlan, spec: RuntimeSpec) -> ReadyModel:
    """A cluster's plan: the model's files read and checked (identity, metadata), no runtime
    opened; its bands open theirs on their workers."""
    files = ModelFiles(model.path, "cpu")
    _same_geometry(model.path, model.geometry, files.meta)
    handle = ModelHandle(str(model.path), policy.device.value, spec, files.identity)
    return ReadyModel(handle, files.meta, policy, None)


def slide_facts(
    machine: Machine,
    params: SegmentParams,
    facts: RunFacts,
    slide_path: str,
    slide: Slide,
    key: LevelKey | None,
) -> tuple[RunFacts, JpegTiles | None]:
    """`facts` with the slide's read level examined where the policy may read it on the
    device (`key`: that level; None: not known yet), and the tiles it would read. A
    cluster's plan examines nothing: its bands read, and decide, on the workers."""
    if key is None or facts.place == CLUSTER or not wants_slide_reads(machine, params):
        return facts, None
    reads, tiles = slide_reads(slide_path, slide, key)
    return dataclasses.replace(facts, reads=reads), tiles


def _same_geometry(model_dir: Path, planned: tuple[int, float], meta: ModelMeta) -> None:
    """The chunks were planned from model.json before the model loaded: a model.json that
    changed in between is refused rather than planned again."""
    if planned != (int(meta.tile_size), float(meta.mpp)):
        raise ModelError(
            f"{model_dir / 'model.json'}: changed while the slide was prepared (planned for "
            f"tile {planned[0]} at {planned[1]} mpp, loaded {meta.tile_size} at {meta.mpp}); "
            "rerun once the model folder stays unchanged"
        )
