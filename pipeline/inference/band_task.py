"""One band of a slide on a Dask worker: the engine over a run of contiguous chunks.

The band runs `run_engine` with the worker's model (loaded once per worker process, shared
under its lock like the slides of a local batch) and the read source a local run would pick
on that machine (`band_source`): the device read path where `--read-device` and the slide
allow it, decoder processes where asked for (`--decoders N`) or on a GPU worker, else the
reader thread. A worker process that is *daemonic* may not start processes (Python refuses:
its children would be orphaned when it is terminated). Dask starts workers daemonic unless
`distributed.worker.daemon` is False; our local clusters turn it off (`flows.dask_cluster`),
for workers started by hand set `DASK_DISTRIBUTED__WORKER__DAEMON=False`. On a daemonic
worker a band that would start decoders reads in its reader thread instead (the same bytes),
logs a warning naming the setting, and reports 0 decoders.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wsi_segment.errors import WsiSegmentError
from wsi_segment.pipeline.inference.chunk_job import SlideJob
from wsi_segment.pipeline.inference.engine import run_engine
from wsi_segment.pipeline.inference.engine_state import EngineAborted
from wsi_segment.pipeline.inference.read_device import GPU, choose_reads
from wsi_segment.pipeline.outputs.chunk_summary import ChunkOutcome
from wsi_segment.pipeline.params import run_writers, shared_decoders, usable_cores
from wsi_segment.wsi.tiling import ChunkSpec

if TYPE_CHECKING:
    from distributed import Event

    from wsi_segment.pipeline.inference.read_source import ReadSource

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
    decoders: int  # decoder processes the band ran with; 0: a reader thread
    error: BaseException | None = None  # bad input (a WsiSegmentError): fails the slide
    aborted: bool = False  # the slide failed elsewhere; this band stopped or never started
    reads: dict[str, str] = field(default_factory=dict)  # the read choice, for summary.json
    daemonic: bool = False  # asked for decoders on a daemonic worker: read in a thread


@dataclass(frozen=True)
class BandReads:
    """How a band reads, as the run asked: `--decoders` (None: the device's default) and
    `--read-device`."""

    decoders: int | None = None
    read_device: str = "auto"


def band_decoders(
    requested: int | None, device_type: str, in_flight: int, cores: int | None = None
) -> int:
    """Decoders of one band: `requested` (0: the reader thread), else on a GPU the engine's
    default (one per core but one, at most 16) shared out between the `in_flight` bands the
    worker runs at once, at least 1; 0 on the CPU, as a local run."""
    if requested is not None:
        return max(0, requested)
    return shared_decoders(None, device_type, slides=max(1, in_flight), cores=cores)


def band_source(
    job: SlideJob, reads: BandReads, in_flight: int
) -> tuple[ReadSource, dict[str, str], bool]:
    """The read source of a band on this worker, the read choice it reports, and whether
    decoders were due but the worker is daemonic: the device read path where it serves the
    slide, else decoder processes or the reader thread."""
    from wsi_segment.pipeline.inference.model_handle import model_device_type  # torch
    from wsi_segment.pipeline.inference.reader_thread import HostTiles, ReaderThread

    model, _lock = job.model.get()
    device_type = model_device_type(model)
    reader = job.reader
    key = (reader.read_level, reader.level0_per_model)
    try:
        choice = choose_reads(
            reads.read_device, device_type == "cuda", job.slide_path, reader.slide(), key
        )
    finally:
        reader.close_local()
    if choice.device == GPU and choice.tiles is not None:
        from wsi_segment.pipeline.inference.device_tiles import DeviceTiles

        source = ReaderThread(DeviceTiles(reader, choice.tiles, model.device))
        return source, choice.report(), False
    n = band_decoders(reads.decoders, device_type, in_flight)
    daemonic = bool(n) and mp.current_process().daemon
    if n and not daemonic:
        from wsi_segment.pipeline.inference.decoder_reads import DecoderProcesses

        return DecoderProcesses(n), choice.report(), False
    return ReaderThread(HostTiles(reader)), choice.report(), daemonic


def run_band(
    job: SlideJob,
    specs: list[ChunkSpec],
    abort: str | None,
    reads: BandReads,
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
    in_flight = _bands_at_once_here(gpu, at_once or {})
    share = max(1, usable_cores() // in_flight)  # this band's cores
    try:
        source, choice, daemonic = band_source(job, reads, in_flight)
        try:
            n = source.processes
            if daemonic:
                log.warning("%s: this Dask worker is daemonic, reading in a thread; %s",
                            job.slide_path, DAEMON_FIX)  # fmt: skip
            stop = threading.Event()
            with _watching(event, stop), _torch_threads(share):
                # side by side with the worker's other bands, each on its share of the cores
                outcomes = run_engine(
                    job,
                    specs,
                    source,
                    abort=stop,
                    writers=run_writers(None, n, cores=share),
                    locked=False,
                )
        finally:
            source.close()  # run_engine closed it, unless an interrupt came first
        return BandResult(outcomes, n, reads=choice, daemonic=daemonic)
    except EngineAborted:
        return BandResult([], 0, aborted=True)
    except WsiSegmentError as exc:
        return BandResult([], 0, error=exc)


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
def _torch_threads(cap: int) -> Iterator[None]:
    """At most `cap` torch threads for this band's forward passes on the CPU (the bands of a
    machine share its cores; Dask's workers may already run with fewer: kept), the band
    thread's own count given back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cap)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
