"""One band of a slide on a Dask worker: the device engine over a run of contiguous chunks.

The band starts its own decoder processes and runs `run_engine` with the worker's model
(loaded once per worker process, shared under its lock like the slides of a local batch).
A worker process that is *daemonic* may not start processes (Python refuses: its children
would be orphaned when it is terminated). Dask starts workers daemonic unless
`distributed.worker.daemon` is False; our local clusters turn it off
(`flows.dask_cluster`), for workers started by hand set `DASK_DISTRIBUTED__WORKER__DAEMON=False`.
On a daemonic worker the band decodes in threads instead (the chunk path, `run_chunks`,
the same outputs), logs a warning naming the setting, and reports 0 decoders.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsi_segment.errors import WsiSegmentError
from wsi_segment.pipeline.inference.chunk_job import SlideJob
from wsi_segment.pipeline.inference.chunk_runner import run_chunks
from wsi_segment.pipeline.inference.engine import run_engine
from wsi_segment.pipeline.inference.engine_state import EngineAborted
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.params import shared_decoders
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from distributed import Event

log = logging.getLogger(__name__)

ABORT_POLL_S = 0.5  # how soon a running band notices that another band failed
DAEMON_FIX = (
    "start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False in their environment "
    "(Dask config distributed.worker.daemon: false) so each band can start decoder processes"
)


@dataclass
class BandResult:
    """What one band returns to the client (a value, so Dask retries only real crashes)."""

    outcomes: list[ChunkOutcome]
    decoders: int  # decoder processes the band ran with; 0: threads (a daemonic worker)
    error: BaseException | None = None  # bad input (a WsiSegmentError): fails the slide
    aborted: bool = False  # the slide failed elsewhere; this band stopped or never started


def band_decoders(requested: int | None, in_flight: int, cores: int | None = None) -> int:
    """Decoders of one band: `requested`, else the engine's GPU default (one per core but
    one, at most 16) shared out between the `in_flight` bands the worker runs at once,
    at least 1."""
    if requested is not None:
        return max(1, requested)
    return shared_decoders(None, "cuda", slides=max(1, in_flight), cores=cores)


def run_band(
    job: SlideJob,
    specs: list[ChunkSpec],
    abort: str | None,
    decoders: int | None,
    gpu: bool,
    at_once: dict[str, int] | None = None,
) -> BandResult:
    """Dask task: run `specs` (contiguous chunks) through the engine on this worker.

    `abort`: name of the slide's distributed Event (None: not on a cluster); `gpu`: the
    band holds the worker's GPU resource, so it is the only band running there;
    `at_once`: bands that may run at once on each host (the workers of one machine share
    its cores; default: this worker's threads, or 1 with `gpu`)."""
    event = _abort_event(abort)
    if event is not None and event.is_set():
        return BandResult([], 0, aborted=True)
    n = band_decoders(decoders, _bands_at_once_here(gpu, at_once or {}))
    try:
        if mp.current_process().daemon:
            log.warning("%s: this Dask worker is daemonic, decoding in threads; %s",
                        job.slide_path, DAEMON_FIX)  # fmt: skip
            return BandResult(run_chunks(job, specs, threads=n), 0)
        # imported here: decoder_reads imports torch, and a rerun that finds every slide up
        # to date must not (pipeline.up_to_date)
        from wsi_segment.pipeline.inference.decoder_reads import DecoderProcesses

        stop = threading.Event()
        with _watching(event, stop):
            return BandResult(run_engine(job, specs, DecoderProcesses(n), abort=stop), n)
    except EngineAborted:
        return BandResult([], n, aborted=True)
    except WsiSegmentError as exc:
        return BandResult([], n, error=exc)


def _abort_event(name: str | None) -> Event | None:
    if name is None:
        return None
    from distributed import Event

    return Event(name)


def _bands_at_once_here(gpu: bool, at_once: dict[str, int]) -> int:
    """Bands sharing this machine's cores: `at_once` for this worker's host, else this
    worker's own (1 with the GPU resource, else its threads; 1 outside a worker)."""
    from distributed import get_worker
    from distributed.comm import get_address_host

    try:
        worker = get_worker()
    except ValueError:  # not inside a worker (a direct call)
        return 1
    here = at_once.get(get_address_host(worker.address), 0)
    return max(1, here or (1 if gpu else int(worker.state.nthreads)))


@contextlib.contextmanager
def _watching(event: Event | None, stop: threading.Event) -> Iterator[None]:
    """Set `stop` once the cluster-wide `event` is set, until the block ends."""
    if event is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                if event.wait(timeout=ABORT_POLL_S):
                    stop.set()
                    return
            except Exception:  # the scheduler briefly unreachable: ask again shortly
                done.wait(ABORT_POLL_S)

    thread = threading.Thread(target=watch, name="band-abort-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
