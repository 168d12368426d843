"""Run the chunks of one slide with Dask: local threads, or a distributed cluster.

Local: the threaded scheduler with `threads` workers; the model lock lets one thread run
the model at a time while the others read and decode, so reading hides behind compute.
Distributed: the job is broadcast once to every worker, chunks are submitted as futures
with deterministic keys, and a chunk whose worker dies is recomputed elsewhere; since a
chunk owns its zarr chunks and its result depends only on its inputs, outputs stay identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
from dask.callbacks import Callback

from pipeline.chunk_job import ChunkOutcome, ChunkSpec, SlideJob
from pipeline.progress import NullProgress, Progress


class _TileCounter(Callback):
    """Advance the progress bar by the tiles of every finished chunk."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if isinstance(result, ChunkOutcome):
            self.progress.advance(result.tiles_run)


def run_chunk(job: SlideJob, spec: ChunkSpec) -> ChunkOutcome:
    """Module-level entry point so distributed pickles a reference, not a closure."""
    return job.run(spec)


def run_chunks(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    threads: int = 2,
    client: Any | None = None,
    progress: Progress | None = None,
    key_prefix: str = "chunk",
) -> list[ChunkOutcome]:
    """Process every chunk; return outcomes in the order of `specs`."""
    progress = progress or NullProgress()
    if client is not None:
        return _run_distributed(job, specs, client, progress, key_prefix)
    tasks = [dask.delayed(run_chunk, pure=True)(job, spec) for spec in specs]
    with _TileCounter(progress):
        results = dask.compute(*tasks, scheduler="threads", num_workers=threads)
    return list(results)


def _run_distributed(
    job: SlideJob, specs: Sequence[ChunkSpec], client: Any, progress: Progress, key_prefix: str
) -> list[ChunkOutcome]:
    from distributed import as_completed

    job_future = client.scatter(job, broadcast=True, hash=False)
    keys = [f"{key_prefix}-{s.row}-{s.col}" for s in specs]
    futures = client.map(
        run_chunk, [job_future] * len(specs), list(specs), key=keys, retries=2, pure=False
    )
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[ChunkOutcome | None] = [None] * len(specs)
    for future in as_completed(futures):
        outcome = future.result()
        results[index[future.key]] = outcome
        progress.advance(outcome.tiles_run)
    return [r for r in results if r is not None]
