"""Run the chunks of one slide with Dask: local threads, or a distributed cluster.

Local: the threaded scheduler with `threads` workers, `threads` chunks in flight. On a GPU
the model lock lets one thread run the model at a time while the others read and decode, so
reading hides behind compute. On a CPU every thread runs its own chunk's forward passes
with `cores // threads` torch threads each (see `SlideJob.cpu_threads_per_chunk`): the
cores are the bottleneck, and a few single-threaded forward passes side by side waste none
of them in OpenMP barriers, while one thread's reading simply uses a core another's
forward pass would otherwise share. The graph is built by hand with fixed keys: `delayed`
with `pure=True` would hash the whole job (model weights included) once per chunk.
Distributed: the job is broadcast once to every worker, chunks are submitted as futures
with deterministic keys, and a chunk whose worker dies is recomputed elsewhere; since a
chunk owns its zarr chunks and its result depends only on its inputs, outputs stay identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dask.callbacks import Callback
from dask.threaded import ContextAwareThreadPoolExecutor
from dask.threaded import get as threaded_get

from wsi_segment.pipeline.inference.chunk_job import SlideJob, precision_here
from wsi_segment.pipeline.inference.chunk_prefetch import ChunkPrefetcher
from wsi_segment.pipeline.inference.cluster_gather import gather_all
from wsi_segment.pipeline.inference.model_handle import ModelHandle, model_device_type
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.params import usable_cores
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.wsi.retries import is_transient
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:  # distributed is imported only when a cluster is used
    from distributed import Client


class _TileCounter(Callback):
    """Advance the progress bar by the tiles of every finished chunk."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # dask's, unannotated
        self.progress = progress

    def _posttask(
        self, key: object, result: object, dsk: object, state: object, worker_id: object
    ) -> None:
        if isinstance(result, ChunkOutcome):
            self.progress.advance(result.tiles_run)


def run_chunk(job: SlideJob, spec: ChunkSpec) -> ChunkOutcome:
    """Module-level entry point so distributed pickles a reference, not a closure."""
    return job.run(spec)


def run_chunk_prefetched(job: SlideJob, spec: ChunkSpec, prefetch: ChunkPrefetcher) -> ChunkOutcome:
    """Local entry point: the chunk's image from the prefetcher when it already read it."""
    read = prefetch.take(spec)
    return job.run(spec, read if read is not None else prefetch.read_here(spec))


def run_chunks(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    threads: int = 2,
    client: Client | None = None,
    progress: Progress | None = None,
    key_prefix: str = "chunk",
    prefetch: ChunkPrefetcher | None = None,
) -> list[ChunkOutcome]:
    """Process every chunk; return outcomes in the order of `specs`.

    `prefetch` (local runs only) supplies chunk images already read in the background.
    """
    progress = progress or NullProgress()
    if client is not None:
        return _run_distributed(job, specs, client, progress, key_prefix)
    if not specs:
        return []
    per_chunk = cpu_threads_per_chunk(job, threads)
    if per_chunk:
        job = dataclasses.replace(job, cpu_threads_per_chunk=per_chunk, _local=threading.local())
    job_key = f"{key_prefix}-job"
    keys = [f"{key_prefix}-{s.row}-{s.col}" for s in specs]
    graph: dict[str, object] = {job_key: job}
    if prefetch is None:
        graph.update({k: (run_chunk, job_key, s) for k, s in zip(keys, specs, strict=True)})
    else:
        prefetch_key = f"{key_prefix}-prefetch"
        graph[prefetch_key] = prefetch
        graph.update(
            {
                k: (run_chunk_prefetched, job_key, s, prefetch_key)
                for k, s in zip(keys, specs, strict=True)
            }
        )
    # Our own pool, shut down (waiting) before returning or raising: when one chunk fails,
    # dask raises at once while other chunks are still running, and those would go on
    # writing into the partial folder after it was removed (resurrecting it, or writing
    # into the next run's folder once the lock is released).
    pool = ContextAwareThreadPoolExecutor(threads)
    with _TileCounter(progress), _restore_torch_threads(per_chunk > 0):
        try:
            results = threaded_get(graph, keys, pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return list(results)


def cpu_threads_per_chunk(job: SlideJob, threads: int, cap: int | None = None) -> int:
    """Torch threads per concurrent chunk when the model runs on the CPU (cores // threads,
    at most `cap`), else 0 (the model lock)."""
    model, _ = job.model.get()
    if model_device_type(model) != "cpu":
        return 0
    per_chunk = max(1, usable_cores() // max(1, threads))
    return per_chunk if cap is None else max(1, min(cap, per_chunk))


@contextlib.contextmanager
def _restore_torch_threads(active: bool) -> Iterator[None]:
    """Chunks change torch's thread count in their threads; give the caller its own back."""
    if not active:
        yield
        return
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass(frozen=True)
class ChunkFailed:
    """A chunk's error that would recur (a damaged tile: a SlideError), returned as the
    task's value so Dask does not retry it; only transient I/O errors are raised (retried)."""

    error: BaseException


def run_chunk_unless_aborted(
    job: SlideJob, spec: ChunkSpec, abort: str
) -> ChunkOutcome | ChunkFailed | None:
    """Distributed entry point: a chunk that starts after the slide failed does nothing."""
    from distributed import Event

    if Event(abort).is_set():
        return None
    _size_for_this_worker(job)
    try:
        return job.run(spec)
    except Exception as exc:
        if is_transient(exc):
            raise
        return ChunkFailed(exc)


def _size_for_this_worker(job: SlideJob) -> None:
    """On a CPU worker, run the forward passes of the worker's threads side by side, as
    local runs do, instead of one at a time under the model lock: with the lock a 2-thread
    worker computed on one core (inference 172 s instead of 60 s, 1770 tiles). Each gets
    the worker's torch threads (Dask sets OMP_NUM_THREADS=1: a core per task), at most
    cores // worker threads. `job` is this worker's copy of the broadcast job, sized once
    (threads racing here all write the same value)."""
    if job.cpu_threads_per_chunk:
        return
    import torch
    from distributed import get_worker

    try:
        nthreads = int(get_worker().state.nthreads)
    except ValueError:  # not inside a worker (a direct call)
        nthreads = 1
    job.cpu_threads_per_chunk = cpu_threads_per_chunk(job, nthreads, cap=torch.get_num_threads())


def settle_precision_on_cluster(
    job: SlideJob, specs: Sequence[ChunkSpec], client: Client
) -> tuple[SlideJob, dict[str, Any]]:
    """Precision 'auto' on CPU workers: one worker loads the model (which chooses by the
    model and that machine, SegmentationModel.to_device) and every worker gets its answer,
    so a slide never mixes bf16 and fp32 chunks (a chunk recomputed on a new worker
    included). Returns the job to run and that worker's report."""
    if job.model.precision != "auto" or not specs:
        reason = f"{job.model.precision}: asked for (--precision {job.model.precision})"
        return job, {"autocast": job.model.precision, "reason": reason, "calibration": None}
    report = client.submit(precision_here, job, pure=False).result()
    chosen = report.get("autocast")
    if report.get("device") != "cpu" or chosen not in ("fp32", "bf16"):
        return job, report  # GPUs: auto is already fixed (bf16, else fp16)
    model = ModelHandle(job.model.model_dir, job.model.device, chosen, job.model.identity)
    return dataclasses.replace(job, model=model, _local=threading.local()), report


def _run_distributed(
    job: SlideJob, specs: Sequence[ChunkSpec], client: Client, progress: Progress, key_prefix: str
) -> list[ChunkOutcome]:
    """Like the local pool, never return or raise while a chunk may still write: a failed
    chunk sets a cluster-wide abort event (chunks not yet started then return at once) and
    we wait for every future before raising. Cancelling futures would not stop a chunk that
    is already running on a worker, and it would write into a folder the caller removed."""
    from distributed import Event

    abort = f"{key_prefix}-abort-{uuid.uuid4().hex}"
    event = Event(abort, client=client)
    job_future = client.scatter(job, broadcast=True, hash=False)
    keys = [f"{key_prefix}-{s.row}-{s.col}" for s in specs]
    futures = client.map(
        run_chunk_unless_aborted,
        [job_future] * len(specs),
        list(specs),
        [abort] * len(specs),
        key=keys,
        retries=2,
        pure=False,
    )
    results: list[ChunkOutcome | None] = [None] * len(specs)

    def take(i: int, outcome: ChunkOutcome | ChunkFailed | None) -> BaseException | None:
        if isinstance(outcome, ChunkFailed):
            return outcome.error
        if outcome is not None:
            results[i] = outcome
            progress.advance(outcome.tiles_run)
        return None

    gather_all(futures, event, take)
    return [r for r in results if r is not None]
