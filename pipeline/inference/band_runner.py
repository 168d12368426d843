"""Run a slide on a Dask cluster: bands of contiguous chunks, each the engine on a worker.

A few bands per worker slot, so a slow or lost worker costs little. Each band runs
`run_engine` as the slide's plan (decided by the client) says (`band_task`) and writes only
its own chunks' zarr chunks, so a band recomputed after its worker died writes the same bytes
again. Workers whose resources name a `GPU` run one band at a time; others, one per thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, cast

from wsi_segment.errors import ClusterLost
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, POLL_S, CancelToken
from wsi_segment.pipeline.inference.band_task import (
    DAEMON_FIX,
    BandResult,
    band_calibration,
    run_band,
)
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.machine import Machine, probe_machine
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.progress import NullProgress, Progress
from wsi_segment.pipeline.run_policy import ExecutionPlan, settled, waits_for_verdict
from wsi_segment.wsi.shown_path import shown_slide_path
from wsi_segment.wsi.tiling import ChunkSpec, contiguous_runs

if TYPE_CHECKING:  # distributed is imported only when a cluster is used
    from distributed import Client, Event, Future

log = logging.getLogger(__name__)

BANDS_PER_SLOT = 3  # a lost band is a small part of the slide
# A band runs about this many tiles at most (more only where one write unit holds more), so
# a slot frees soon and the slides of a batch share the cluster fairly (docs/reliability.md,
# "Slides sharing a cluster"); a GPU band's fixed cost stays small beside 8x as many tiles.
BAND_TILES = 2048
GPU_BAND_TILES = 8 * BAND_TILES
GPU_RESOURCE = "GPU"


def _slots(client: Client) -> tuple[dict[str, int], bool]:
    """Bands the cluster runs at once per host, and whether each takes a worker's GPU (where
    every worker declares one: one band per worker, else one per thread)."""
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

    `plan`: the slide's, settled (`settle_plan`), shipped to every band. `bands`: how many
    (None: `band_count`). `results` receives each band's `BandResult`, in band order.

    Never returns or raises while a band may still write (`gather_all`). A
    `WsiSegmentError` comes back as the band's value, so Dask does not retry it; other
    errors are retried twice, and a band whose worker died is recomputed elsewhere."""
    specs = list(specs)
    at_once, gpu = _slots(client)
    parts = bands if bands is not None else band_count(specs, max(1, sum(at_once.values())), gpu)
    ranges = contiguous_runs(specs, parts)
    if not ranges:
        return []
    from distributed import Event

    # every band watches one new cluster-wide abort event; the job is scattered once to every
    # worker; band k has priority -k, so the bands of the slides in flight interleave
    abort = f"{key_prefix}-abort-{uuid.uuid4().hex}"
    event = Event(abort, client=client)
    job_future = client.scatter(job, broadcast=True, hash=False)
    futures = [
        client.submit(
            run_band,
            job_future,
            specs[r.start : r.stop],
            abort,
            plan,
            gpu,
            at_once,
            key=f"{key_prefix}-{k}-of-{len(ranges)}",
            retries=2,
            pure=False,
            priority=-k,
            resources={GPU_RESOURCE: 1} if gpu else None,
        )
        for k, r in enumerate(ranges)
    ]
    finished = gather_all(futures, event, progress or NullProgress(), cancel)
    if any(b.daemonic for b in finished):
        shown = shown_slide_path(job.slide_path)
        log.warning("%s: daemonic Dask workers read in threads; %s", shown, DAEMON_FIX)
    if results is not None:
        results.extend(finished)
    return [o for b in finished for o in b.outcomes]


def band_count(specs: Sequence[ChunkSpec], slots: int, gpu: bool = False) -> int:
    """Bands to cut a slide into: a few per slot, and more for a large slide, so that none
    runs more than `BAND_TILES` tiles (`GPU_BAND_TILES` on GPU workers)."""
    tiles = sum(len(s.tiles) for s in specs)
    return max(BANDS_PER_SLOT * slots, -(-tiles // (GPU_BAND_TILES if gpu else BAND_TILES)))


def settle_plan(
    job: SlideJob,
    specs: Sequence[ChunkSpec],
    client: Client,
    plan: ExecutionPlan,
    cancel: CancelToken = NEVER_CANCELLED,
) -> ExecutionPlan:
    """`plan`, or, where it waits for the bf16 calibration's verdict, decided again with the
    verdict one worker's model load obtains, so every band (a recomputed one included) runs
    the same precision. Raises `cancel`'s reason."""
    if not waits_for_verdict(plan) or not specs:
        return plan
    at_once, gpu = _slots(client)  # as the bands see them: they load the same model
    asked = client.submit(band_calibration, job, plan, gpu, at_once, pure=False)
    runtime, calibration = future_result(asked, cancel)
    return settled(plan, runtime, calibration)


def cluster_machine(client: Client, cancel: CancelToken = NEVER_CANCELLED) -> Machine:
    """The machine the cluster's bands run on, as one of its workers describes it, so a
    client without the workers' GPUs plans as they run. Raises `cancel`'s reason."""
    return cast(Machine, future_result(client.submit(probe_machine, pure=False), cancel))


def future_result(future: Future[Any], cancel: CancelToken) -> Any:
    """A Dask future's value, its own state polled every `POLL_S` so that `cancel` is seen
    (`result(timeout=...)` would go through the client's event loop each step)."""
    while not future.done():
        if cancel.wait(POLL_S):
            future.release()
            raise cancel.stop()
    return finished_value(future)


def finished_value(future: Future[Any]) -> Any:
    """A done future's value (or error). One the client lost is 'cancelled': named here,
    since distributed would fail with an `UnboundLocalError`."""
    if future.cancelled():
        raise ClusterLost(
            f"the Dask scheduler lost this slide's task {future.key} (the client's connection "
            "to the scheduler dropped, or the scheduler restarted); run the slide again, and "
            "check the scheduler's log if it happens again"
        )
    return future.result()


# A live loop runs a callback within milliseconds; a loaded machine's busiest client, a few
# seconds. Far longer than either, and still short beside a night's batch.
LOOP_STALL_S = 60.0


class ClientWatch:
    """Whether a Dask client can still deliver its futures' results: once it is closed, or
    its event loop has stopped turning, a wait would last for ever. A polling wait asks
    `check` each step: the client's status, and whether a callback handed to its loop ran
    within `stall_s`. `client` None: nothing to watch (no futures), never gone."""

    def __init__(self, client: Client | None, stall_s: float = LOOP_STALL_S) -> None:
        self.client = client
        self.stall_s = stall_s
        self._answered = threading.Event()
        self._asked_at: float | None = None
        self._gone: ClusterLost | None = None  # once found gone, the client stays gone

    def cause(self) -> ClusterLost | None:
        """Why the client cannot deliver results any more, or None while it can; each call
        while it can hands its loop the next callback (one at a time)."""
        if self._gone is not None or self.client is None:
            return self._gone
        status = str(self.client.status)
        if status in ("closing", "closed"):
            self._gone = ClusterLost(
                f"the Dask client was closed (status {status!r}) while this slide waited for "
                "its bands; no result can arrive: run the slide again (and check what closed "
                "the client: the process shutting down, another thread)"
            )
        elif self._asked_at is None or self._answered.is_set():
            self._answered.clear()
            self._asked_at = time.monotonic()
            loop = self.client.loop
            if loop is None:  # a client without a loop has been closed
                self._gone = ClusterLost(
                    "the Dask client has no event loop (closed); run the slide again"
                )
            else:
                loop.add_callback(self._answered.set)
        elif time.monotonic() - self._asked_at > self.stall_s:
            self._gone = ClusterLost(
                f"the Dask client's event loop has not turned for {self.stall_s:g} s while "
                "this slide waited for its bands (its thread ended, or something blocks it); "
                "no result can arrive: run the slide again, and check the log for an error "
                "in the client's event loop"
            )
        return self._gone

    def check(self) -> None:
        """Raise `cause()`, if there is one."""
        gone = self.cause()
        if gone is not None:
            raise gone


# Waiting for a slide's bands: cancelling a future would not stop a band already running,
# which would write into a folder the caller removes on error. So a failure sets the slide's
# abort event and every future is still waited for; an interrupt waits only `STOP_GRACE_S`.
STOP_GRACE_S = 10.0


def gather_all(
    futures: Sequence[Future[Any]],
    event: Event,
    progress: Progress,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[BandResult]:
    """Every band's result, in band order, once all have ended; `progress` advances by a
    band's tiles as it finishes. The first failure (raised, or a band's error) sets `event`
    and is raised once every future has ended; an interrupt or `cancel` sets it too. A client
    that can no longer deliver results (`ClientWatch`) ends the wait with its ClusterLost."""
    from distributed import as_completed

    done: dict[Hashable, BandResult] = {}  # by future key
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
                    band: BandResult = finished_value(future)
                    failure = band.error
                    if failure is None and not band.aborted:
                        done[future.key] = band
                        progress.advance(sum(o.tiles_run for o in band.outcomes))
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

        # the running bands stop early once `event` is set; timed out, the interrupt goes on
        with contextlib.suppress(Exception):
            wait(list(futures), timeout=STOP_GRACE_S)
        raise
    if watch.cause() is None:
        event.clear()  # frees the event on the scheduler
    if error is not None:
        raise error
    finished = [done[f.key] for f in futures if f.key in done]
    if len(finished) != len(futures):
        raise RuntimeError(f"{len(futures) - len(finished)} bands never completed")
    return finished
