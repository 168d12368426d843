"""The engine: one way from a slide's chunks to the zarr store, whatever reads the tiles.

It holds an executor (`build_executor`: the model's tile graph as the run's plan sized it),
not a model. A read source's threads fill batches of tiles (mixing chunks) on the executor's
device; compute threads run the executor; the writer stitches and writes each write unit.
This thread starts the parts and watches them: the first error, an interrupt or the caller's
cancellation token stops the rest. `run_engine` never returns or raises while a part may
still write, and closes the source on every path. Local runs and Dask bands run this same
function.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, POLL_S, CancelToken
from wsi_segment.pipeline.inference.engine_state import (
    EngineStats,
    FirstError,
    Part,
    start_parts,
    wait_uninterrupted,
)
from wsi_segment.pipeline.inference.polygon_processes import PolygonProcesses
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.inference.unit_writer import UnitWriter
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.pipeline.threads import WaitableThread
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:  # the compute stage is imported when an engine runs
    from wsi_segment.models.runtimes.tile_io import Executor, Geometry, ReducedOutputs, Tiles
    from wsi_segment.pipeline.inference.compute_stage import ComputeStage, StagedBatch
    from wsi_segment.pipeline.inference.model_handle import ModelHandle
    from wsi_segment.pipeline.inference.unit_writer import TileBatch
    from wsi_segment.pipeline.run_policy import ExecutionPlan


@dataclass(frozen=True)
class SourceRun:
    """What a read source's parts are handed for one run: the job and its chunks, the batch
    size and the device the executor takes them on ("cpu", "cuda:0"), the `staged` queue they
    fill, the run's first error and its statistics."""

    job: SlideJob
    specs: list[ChunkSpec]
    batch: int
    device: str
    staged: queue.Queue[StagedBatch | None]
    errors: FirstError
    stats: EngineStats


class ReadSource(Protocol):
    """Reads a run's chunks into batches on the model's device. It reports its errors to the
    run's `FirstError` and checks `FirstError.stopped` while it waits; the engine handles the
    stop, the progress and the first error for every source."""

    @property
    def processes(self) -> int:
        """Decoder processes the source runs (0: it reads in this process)."""
        ...

    def parts(self, run: SourceRun) -> list[Part]:
        """The thread bodies that fill `run.staged` with every chunk that has tiles, in
        batches of `run.batch` tiles, then put None. Called once per run."""
        ...

    def close(self) -> None:
        """Release what the source holds (processes, shared memory, file handles);
        idempotent, called on every path once the parts have ended."""
        ...


@dataclass(frozen=True)
class EngineSizes:
    """How an engine run is laid out, as the run's plan decided it (`of`): nothing here is
    decided again."""

    cores: int  # the CPU cores the compute threads share
    writers: int  # writer threads (finishers)
    computes: int  # compute threads
    locked: bool  # one forward pass at a time per model
    polygon_processes: int  # processes tracing the blocks' polygons (0: the writers do)
    batch: int  # tiles a forward pass asks of the device (a CUDA device's memory may cap it)

    @classmethod
    def of(cls, plan: ExecutionPlan) -> EngineSizes:
        """The sizes `plan` decided (a local run's, or a band's on its worker)."""
        return cls(
            cores=plan.cores.value,
            writers=plan.writers.value,
            computes=plan.compute_threads.value,
            locked=plan.model_lock.value,
            polygon_processes=plan.polygon_processes.value,
            batch=plan.batch_size.value,
        )


@dataclass(frozen=True)
class TileExecutor:
    """The model's tile graph as a run's plan sized it: what the engine holds. `run` is its
    one method; the rest says how the engine feeds it (batches of `batch` tiles on `device`)
    and whether torch runs it (then the engine keeps torch's threads: `torch_threads_kept`)."""

    executor: Executor
    geometry: Geometry  # the tiles it takes and the cores and labels it returns
    batch: int  # tiles a forward pass: the plan's, capped by a CUDA device's memory
    device: str  # where the forward passes run: "cpu", "cuda:0"
    lock: threading.Lock | None  # the model's lock where the plan has its passes take turns
    torch_runs: bool

    def run(self, tiles: Tiles) -> ReducedOutputs:
        """The reduced outputs of one batch of uint8 tiles (N, T, T, 3)."""
        with self.lock if self.lock is not None else contextlib.nullcontext():
            return self.executor.run(tiles)


def build_executor(model: ModelHandle, geometry: Geometry, sizes: EngineSizes) -> TileExecutor:
    """`model`'s executor (loaded for this process) at a slide's tile `geometry`, as the run's
    plan sized it (`sizes`): its batch, which only a CUDA device's free memory may cap; on
    the CPU, each compute thread's share of the cores. Built once per process and key
    (`LoadedModel.executor`), so the slides of a batch, and a worker's bands, share one."""
    from wsi_segment.pipeline.inference.compute_stage import compute_threads_cores

    loaded = model.get()
    batch = loaded.batch_size(geometry.tile, sizes.batch)
    share = compute_threads_cores(sizes.cores, sizes.computes) if loaded.device == "cpu" else None
    executor = loaded.executor(geometry, batch, share)
    lock = loaded.lock if sizes.locked else None
    torch_runs = loaded.runtime.network is not None
    return TileExecutor(executor, geometry, batch, loaded.device, lock, torch_runs)


def run_engine(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    source: ReadSource,
    executor: TileExecutor,
    sizes: EngineSizes,
    stats: EngineStats,
    progress: Progress | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[ChunkOutcome]:
    """Run every chunk through `executor` (`build_executor`), tiles read by `source` (adopted:
    closed whatever happens), laid out as `sizes` says; outcomes in `specs` order. `stats`
    receives what the run did. Cancelling `cancel` stops the parts and raises its
    reason. Local runs and Dask bands call it with `EngineSizes.of(their plan)`."""
    specs = list(specs)
    tracers: PolygonProcesses | None = None
    try:
        if not specs:
            return []
        from wsi_segment.pipeline.inference.compute_stage import ComputeStage

        cancel.check()  # asked while the executor was built (the model's load): no part starts
        if executor.geometry != job.geometry:  # built from the plan before the slide's grid
            raise ValueError(f"an executor for {executor.geometry} given tiles of {job.geometry}")
        errors = FirstError()
        stage = ComputeStage(executor, errors, stats, sizes.computes)
        stats.decoders, stats.writers = source.processes, sizes.writers
        stats.batch_size = executor.batch
        stats.computes = stage.computes
        if sizes.polygon_processes:
            tracers = PolygonProcesses(sizes.polygon_processes)
        polygons = tracers.block_polygons if tracers is not None else None
        writer = UnitWriter(job, specs, progress or NullProgress(), sizes.writers, polygons)
        with torch_threads_kept(executor.torch_runs):
            _run_parts(job, specs, source, executor, stage, writer, errors, stats, cancel)
        del stage
        if errors.error is not None:
            # The frames of the parts are done: drop their locals so nothing outlives the
            # run, keeping the lines for a traceback.
            traceback.clear_frames(errors.error.__traceback__)
            raise errors.error
        return writer.results()
    finally:
        try:
            source.close()
        finally:
            if tracers is not None:
                tracers.close()


def _run_parts(
    job: SlideJob,
    specs: list[ChunkSpec],
    source: ReadSource,
    executor: TileExecutor,
    stage: ComputeStage,
    writer: UnitWriter,
    errors: FirstError,
    stats: EngineStats,
    cancel: CancelToken,
) -> None:
    """Start the source's parts, the compute threads and the writer; watch them until every
    thread has ended. Errors (an interrupt included) go to `errors`: it returns rather than
    raises, so the queues go with this frame, not with a traceback."""
    threads: list[WaitableThread] = []
    try:
        staged: queue.Queue[StagedBatch | None] = queue.Queue(maxsize=1)
        written: queue.Queue[TileBatch | None] = queue.Queue(maxsize=4)
        run = SourceRun(job, specs, executor.batch, executor.device, staged, errors, stats)
        bodies = source.parts(run)
        bodies += [(stage.compute, (staged, written))] * stage.computes
        bodies.append((writer.run, (written, errors)))
        start_parts(bodies, threads)
        del bodies
        for thread in threads:  # short waits, so a cancellation is seen at once
            while not thread.wait(POLL_S):
                if cancel.cancelled and not errors.stopped:
                    errors.report(cancel.stop())
    except BaseException as exc:  # an interrupt too: cleaned up here, re-raised above
        errors.report(exc)
    finally:
        if errors.error is not None or not all(t.ended for t in threads):
            errors.stop()
        for thread in threads:
            stop = wait_uninterrupted(thread.wait)
            if stop is not None:  # stopped from outside while its parts ended
                errors.report(stop)
                errors.stop()


@contextlib.contextmanager
def torch_threads_kept(torch_runs: bool) -> Iterator[None]:
    """The caller's torch thread count given back after the block where torch runs the model
    (`torch_runs`): its compute threads set their own share, and with some builds the count is
    process-wide. Set again even where the caller's own is unchanged: torch starts every new
    thread with the count set last (a compute thread's share), and the next slide's load
    and reader threads need the process's. An OpenVINO run never imports torch."""
    if not torch_runs:
        yield
        return
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)
