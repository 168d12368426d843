"""Run a slide on a Dask cluster whose workers each run the engine over bands of chunks.

The chunk plan is cut into bands (`wsi.tiling.contiguous_runs`: contiguous runs of chunks in
plan order, balanced by tile count, never splitting a write unit), a few per worker slot so
a slow or lost worker costs little. Each band is one Dask task, which takes the slide's plan
(decided by the client: `pipeline.run_policy.decide`), decides on its worker only what depends
on that worker's machine, and runs `run_engine` as the plan says
(`pipeline.inference.band_task`). A band writes only the zarr chunks of its own chunks, so a
band recomputed after its worker died writes the same bytes again. Where the plan waits for
the bf16 calibration's verdict, one worker's model load obtains it and the client decides the
plan again with it before any band starts (`settle_plan`).

Workers whose resources name a `GPU` (our local GPU clusters, the compose file, the SLURM
example) run one band at a time each: one compute stage per device, with the worker's cores as
its decoders. Elsewhere a worker runs as many bands at once as it has threads, and shares
its cores out between them; the workers of one machine share its cores too.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import SlideError
from wsi_segment.models.runtimes.decision import BF16_IF_CALIBRATED
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, POLL_S, CancelToken
from wsi_segment.pipeline.inference.band_task import (
    DAEMON_FIX,
    BandResult,
    band_calibration,
    run_band,
)
from wsi_segment.pipeline.inference.client_watch import ClientWatch
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.machine import Machine, probe_machine
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.pipeline.run_policy import ExecutionPlan, with_calibration
from wsi_segment.wsi.tiling import ChunkSpec, contiguous_runs

if TYPE_CHECKING:  # distributed is imported only when a cluster is used
    from distributed import Client, Event, Future

log = logging.getLogger(__name__)

BANDS_PER_SLOT = 3  # bands per band a worker can run at once: a lost band is a small part
# Slides of a batch share one cluster fairly by construction: a band runs about this many
# tiles at most (more only where one write unit holds more), so a slot frees within one
# short band whatever the slide's size, and a slide's k-th band has priority -k, so a slide
# that starts later takes the next free slot ahead of the bands a slow slide still has
# queued (its first band ahead of their second, ...): it never waits for the whole of
# another slide (docs/reliability.md, "Slides sharing a cluster"). A GPU band may run 8x as
# many: a band's fixed cost (its policy, its decoders' start, about a second) stays small
# beside its tiles on a device that runs them that much faster.
BAND_TILES = 2048
GPU_BAND_TILES = 8 * BAND_TILES
GPU_RESOURCE = "GPU"


def _slots(client: Client) -> tuple[dict[str, int], bool]:
    """Bands the cluster runs at once, per host, and whether each takes a worker's GPU
    resource (every worker declares one): then one band per worker at a time, else one
    per worker thread."""
    from distributed.comm import get_address_host

    workers: dict[str, Any] = client.scheduler_info(n_workers=-1)["workers"]
    gpus = [float(w.get("resources", {}).get(GPU_RESOURCE, 0)) for w in workers.values()]
    gpu = bool(gpus) and all(g >= 1 for g in gpus)
    per_host: dict[str, int] = {}
    for address, w in workers.items():
        host = get_address_host(address)
        per_host[host] = per_host.get(host, 0) + (1 if gpu else max(1, int(w.get("nthreads", 1))))
    return per_host, gpu


def run_bands(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    client: Client,
    plan: ExecutionPlan,
    progress: Progress | None = None,
    key_prefix: str = "band",
    bands: int | None = None,
    results: list[BandResult] | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[ChunkOutcome]:
    """Run every chunk in bands on the cluster's workers; outcomes in `specs` order.

    `plan`: the slide's, shipped to every band, which decides on its worker only
    `run_policy.WORKER_DECISIONS` (`run_policy.for_worker`; settled first where it waits
    for a calibration: `settle_plan`). `bands`: how many (None: a few per worker slot). `results`
    (optional) receives each band's `BandResult`, in band order.
    The progress bar advances per band, by its tiles, as each band finishes. `cancel`: a
    stop of the slide from outside (`gather_all`).

    This never returns or raises while a band may still write: a failed band sets a
    cluster-wide abort event (bands not yet started return at once, running ones stop their
    engine) and every band is waited for before the first error is raised. A
    `WsiSegmentError` (bad input) comes back as the band's value, so Dask does not retry it;
    other errors are retried twice, and a band whose worker died is recomputed elsewhere by
    the scheduler."""
    progress = progress or NullProgress()
    specs = list(specs)
    placement = _slots(client)
    slots = max(1, sum(placement[0].values()))
    parts = bands if bands is not None else band_count(specs, slots, placement[1])
    ranges = contiguous_runs(specs, parts)
    if not ranges:
        return []
    pieces = [specs[r.start : r.stop] for r in ranges]
    event, futures = _submit_bands(client, job, pieces, plan, placement, key_prefix)
    finished = _wait_for_bands(futures, event, progress, cancel)
    if any(b.daemonic for b in finished):
        log.warning("%s: daemonic Dask workers read in threads; %s", job.slide_path, DAEMON_FIX)
    if results is not None:
        results.extend(finished)
    return [o for b in finished for o in b.outcomes]


def band_count(specs: Sequence[ChunkSpec], slots: int, gpu: bool = False) -> int:
    """Bands to cut a slide into: a few per slot the cluster runs at once, and more for a
    large slide, so that none runs more than `BAND_TILES` tiles (`GPU_BAND_TILES` on
    workers that each run one band on their GPU)."""
    tiles = sum(len(s.tiles) for s in specs)
    return max(BANDS_PER_SLOT * slots, -(-tiles // (GPU_BAND_TILES if gpu else BAND_TILES)))


def _submit_bands(
    client: Client,
    job: SlideJob,
    pieces: list[list[ChunkSpec]],  # each band's chunks, in plan order
    plan: ExecutionPlan,
    placement: tuple[dict[str, int], bool],  # as `_slots` says: bands at once per host, GPU
    key_prefix: str,
) -> tuple[Event, list[Future[Any]]]:
    """One Dask task per band, all watching one new cluster-wide abort event (returned with
    the futures); the job is scattered once to every worker rather than sent with each band,
    and a band on GPU workers takes a worker's GPU resource. Band k has priority -k, so the
    bands of slides in flight interleave (`BAND_TILES`)."""
    from distributed import Event

    at_once, gpu = placement
    abort = f"{key_prefix}-abort-{uuid.uuid4().hex}"
    event = Event(abort, client=client)
    job_future = client.scatter(job, broadcast=True, hash=False)
    futures = [
        client.submit(
            run_band,
            job_future,
            piece,
            abort,
            plan,
            gpu,
            at_once,
            key=f"{key_prefix}-{k}-of-{len(pieces)}",
            retries=2,
            pure=False,
            priority=-k,
            resources={GPU_RESOURCE: 1} if gpu else None,
        )
        for k, piece in enumerate(pieces)
    ]
    return event, futures


def _wait_for_bands(
    futures: Sequence[Future[Any]], event: Event, progress: Progress, cancel: CancelToken
) -> list[BandResult]:
    """Every band's result, in band order, once all have ended; the first band's error is
    raised then (`gather_all`). The progress bar advances by a band's tiles as it finishes."""
    done: list[BandResult | None] = [None] * len(futures)

    def take(k: int, band: BandResult) -> BaseException | None:
        if band.error is None and not band.aborted:
            done[k] = band
            progress.advance(sum(o.tiles_run for o in band.outcomes))
        return band.error

    gather_all(futures, event, take, cancel)
    finished = [b for b in done if b is not None]
    if len(finished) != len(futures):
        raise RuntimeError(f"{len(futures) - len(finished)} bands never completed")
    return finished


def settle_plan(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    client: Client,
    plan: ExecutionPlan,
    cancel: CancelToken = NEVER_CANCELLED,
) -> ExecutionPlan:
    """The slide's plan for its bands: `plan` as decided, or, where it waits for the bf16
    calibration's verdict (`bf16-if-calibrated` with none known on the client), decided again
    with the verdict one worker's model load obtains as that plan says (it depends on the
    model and the machine: `models.runtimes.select.open_runtime`), so every band, one
    recomputed on a new worker included, runs the same precision. Raises `cancel`'s reason
    once it is cancelled."""
    waiting = plan.precision.value == BF16_IF_CALIBRATED and plan.calibration is None
    if not waiting or not specs:
        return plan
    at_once, gpu = _slots(client)  # as the bands see them: they load the same model
    asked = client.submit(band_calibration, job, plan, gpu, at_once, pure=False)
    runtime, calibration = future_result(asked, cancel)
    if calibration is None or runtime != plan.runtime.value:
        return plan  # the model ran without one (OpenVINO could not: torch's precision)
    return with_calibration(plan, runtime, calibration)


def cluster_machine(client: Client, cancel: CancelToken = NEVER_CANCELLED) -> Machine:
    """The machine the cluster's bands run on, as one of its workers describes it
    (`pipeline.machine.probe_machine` there): a slide's plan for the cluster is decided for
    it, so a client without the workers' GPUs plans as they run. Raises `cancel`'s reason
    once it is cancelled."""
    machine: Machine = future_result(client.submit(probe_machine, pure=False), cancel)
    return machine


def future_result(future: Future[Any], cancel: CancelToken) -> Any:
    """The value of a Dask future, waited for in steps of `POLL_S` so that `cancel` is
    seen; once it is cancelled the future is released and the reason raised. The wait
    watches the future's own state: `result(timeout=...)` would go through the client's event
    loop each step, and a future the client loses meanwhile ends in distributed's internal
    `UnboundLocalError` instead of an error that says what happened."""
    while not future.done():
        if cancel.wait(POLL_S):
            future.release()
            raise cancel.stop()
    return finished_value(future)


def finished_value(future: Future[Any]) -> Any:
    """The value (or the raised error) of a future that is done. A future the client lost
    (its connection to the scheduler dropped, the scheduler restarted or forgot the task) is
    'cancelled': named here as the slide's error, since distributed would fail inside its own
    `sync` with an `UnboundLocalError` that says nothing of the cause."""
    if future.cancelled():
        raise SlideError(
            f"the Dask scheduler lost this slide's task {future.key} (the client's connection "
            "to the scheduler dropped, or the scheduler restarted); run the slide again, and "
            "check the scheduler's log if it happens again"
        )
    return future.result()


# Waiting for a slide's bands: every one ends before the first failure is raised.
# Cancelling futures would not stop a band already running on a worker, and it would write
# into a folder the caller removes on error. So a failure sets the slide's cluster-wide
# abort event (bands not yet started return at once, running engines stop) and the caller
# still waits for every future. An interrupt (Ctrl-C; a batch stopping the slide: its
# cancellation token, seen within `POLL_S`) waits only `STOP_GRACE_S` for the running bands,
# so a band stuck on a worker cannot hold the interrupt.
STOP_GRACE_S = 10.0


def gather_all(
    futures: Sequence[Future[Any]],
    event: Event,
    on_result: Callable[[int, Any], BaseException | None],
    cancel: CancelToken = NEVER_CANCELLED,
) -> None:
    """Hand each future's value to `on_result` (with its index in `futures`) as it completes;
    the first failure (a raised exception, or the error `on_result` returns) sets `event` and
    is raised once every future has ended. An interrupt while waiting, or `cancel` being
    cancelled (its reason is raised), sets `event` too. A client that can no longer deliver
    results (closed, or its event loop stopped: `ClientWatch`) ends the wait with a
    SlideError naming the cause, without going through that client again."""
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    error: BaseException | None = None
    watch = ClientWatch(futures[0].client if futures else None)
    try:
        pending = as_completed(futures)
        while not pending.is_empty():
            cancel.check()
            if not pending.has_ready():
                watch.check()
                cancel.wait(POLL_S)
                continue
            for future in pending.next_batch(block=False):
                try:
                    failure = on_result(index[future.key], finished_value(future))
                except Exception as exc:  # first failure wins; the others are its echoes
                    failure = exc
                if failure is not None and error is None:
                    error = watch.cause() or failure  # a closed client cancels every future
                    if error is failure:
                        event.set()
    except BaseException:  # interrupted while waiting: started tasks finish, no new ones
        if watch.cause() is not None:
            raise  # every call through the client would fail or wait on its dead loop
        event.set()
        from distributed import wait

        # up to STOP_GRACE_S for the running tasks (they stop early once `event` is set), so
        # they do not write into a folder the caller is about to remove; timed out, or the
        # cluster going away: the interrupt goes on
        with contextlib.suppress(Exception):
            wait(list(futures), timeout=STOP_GRACE_S)
        raise
    if watch.cause() is None:
        event.clear()  # frees the event on the scheduler
    if error is not None:
        raise error
