"""The engine's read sources and `plan_source`, which makes the one a plan names for one engine
(locally or in a Dask band); and what the slide offers the device read path (`slide_reads`: the
facts `pipeline.run_policy` decides it from, examined once where the run is planned).

A local run hands in what it started early (the decoders, while tissue is detected; the host
reads): the source adopts it and closes it like its own; whatever it does not adopt is closed
here. Nothing here imports torch at import time (the planning of a rerun never loads it): the
sources import it, with the `Stager`, once they run.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from wsi_segment.errors import DecoderDied
from wsi_segment.pipeline.inference.decode_pool import DecodePool, SlotRing
from wsi_segment.pipeline.inference.decoder_link import Decoded, Failed, Finished
from wsi_segment.pipeline.inference.engine_state import Part, Stopped
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.read_policy import ReadFacts
from wsi_segment.wsi.raw_tiles import JpegTiles, Unsupported, open_jpeg_tiles
from wsi_segment.wsi.region_reader import choose_level, same_pixels
from wsi_segment.wsi.slide import Slide

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.compute_stage import ChunkTiles
    from wsi_segment.pipeline.inference.device_tiles import DeviceTiles
    from wsi_segment.pipeline.inference.engine import ReadSource, SourceRun
    from wsi_segment.pipeline.inference.model_handle import ModelHandle
    from wsi_segment.pipeline.inference.tile_reader import TileReader
    from wsi_segment.pipeline.run_policy import ExecutionPlan

LevelKey = tuple[int, float]  # (read level, level-0 px per model px) a choice was made for


class ReaderThread:
    """A read source (`engine.ReadSource`): one thread fills batches from `reads`, `HostTiles`
    (any slide) or `DeviceTiles` (JPEG tiles decoded on the model's device); memory is bounded
    by the engine's queues and the read-ahead's byte bound."""

    processes = 0

    def __init__(self, reads: HostTiles | DeviceTiles) -> None:
        self.reads = reads

    def parts(self, run: SourceRun) -> list[Part]:
        from wsi_segment.pipeline.inference.compute_stage import Stager

        self.reads.start(run.specs)
        # host tiles for a CUDA model go through pinned buffers and a side stream, as the
        # decoders' do (`Stager`); device tiles are batched where they are
        stager = Stager(run.batch, run.job.grid.tile, str(self.reads.device), run.device)
        return [(stager.run, (self._chunks(run), run.staged, run.errors))]

    def close(self) -> None:
        self.reads.close()

    def _chunks(self, run: SourceRun) -> Iterator[ChunkTiles]:
        """The tiles of each chunk with tissue tiles, read in plan order."""
        from wsi_segment.pipeline.inference.compute_stage import ChunkTiles

        for index, spec in enumerate(run.specs):
            if not spec.tiles:
                continue  # the writer writes chunks without tissue tiles itself
            tiles = self.reads.read_chunk(spec, run.errors)  # Stopped once the engine stops
            run.stats.chunk_arrived()
            yield ChunkTiles(index, tiles)


class DecoderProcesses:
    """A read source (`engine.ReadSource`): `decoders` spawned processes (`DecodePool`) fill
    shared-memory slots; one stager thread copies each chunk into batches as it comes."""

    def __init__(self, decoders: int, pool: DecodePool | None = None) -> None:
        """`pool`: decoders already started for this run (adopted, and closed whatever
        happens; one started for other chunks or another count is closed and replaced)."""
        self.processes = max(1, decoders)
        self._pool = pool

    def parts(self, run: SourceRun) -> list[Part]:
        from wsi_segment.pipeline.inference.compute_stage import Stager

        pool = self._pool
        if pool is not None and (  # unassigned, or for other chunks or another count
            pool.ring is None or pool.decoders != self.processes or pool.specs != run.specs
        ):
            pool.close()
            pool = self._pool = None
        run.stats.early_decoders = pool is not None
        if pool is None:
            pool = self._pool = DecodePool(self.processes, run.job.reader, run.specs)
        assert pool.ring is not None
        run.stats.slots = pool.ring.slots
        stager = Stager(run.batch, run.job.grid.tile, "cpu", run.device)
        return [(stager.run, (_decoded(run, pool, pool.ring), run.staged, run.errors))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def _decoded(run: SourceRun, pool: DecodePool, ring: SlotRing) -> Iterator[ChunkTiles]:
    """The chunks the decoders report, in their slots, until every decoder finished; each
    slot goes back once its tiles are copied. A decoder's error, or one that died without a
    word (killed for memory, a crash in a codec), stops the run."""
    from wsi_segment.pipeline.inference.compute_stage import ChunkTiles

    finished = set[int]()
    while len(finished) < len(pool.procs):
        if run.errors.stopped:
            raise Stopped
        msg = pool.receive(timeout=0.1)
        if msg is None:
            for d, proc in enumerate(pool.procs):
                if d not in finished and proc.exitcode not in (None, 0):
                    run.errors.report(DecoderDied(
                        f"{run.job.slide_path}: a decoder process died (exit code "
                        f"{proc.exitcode}) while reading this slide; the file may be damaged "
                        "there (re-scan or re-export it), or the machine ran out of memory "
                        "(pass fewer --decoders)"
                    ))  # fmt: skip
            continue
        if isinstance(msg, Decoded):
            run.stats.chunk_arrived()
            tiles = ring.view(msg.slot, msg.tiles)
            yield ChunkTiles(msg.index, tiles, functools.partial(pool.release, msg.slot))
        elif isinstance(msg, Finished):
            finished.add(msg.decoder)
        elif isinstance(msg, Failed):
            run.errors.report(msg.error)


def plan_source(
    plan: ExecutionPlan,
    model: ModelHandle,
    reader: TileReader,
    tiles: JpegTiles | None,
    pool: DecodePool | None = None,
    prefetch: HostTiles | None = None,
) -> ReadSource:
    """What reads the engine's tiles, as `plan` says: the device read path (on `tiles`, with
    `model`'s device), decoder processes (adopting `pool`, decoders started early), or the
    reader thread on `reader` (adopting `prefetch`, host reads started once planned). The source
    owns what it adopted; the rest is closed, and so is the source if that fails."""
    source: ReadSource
    decoder = plan.device_decoder
    if decoder is not None and tiles is not None:
        import torch  # a CUDA model's: loaded

        from wsi_segment.pipeline.inference.device_tiles import DeviceTiles

        device = torch.device(model.get().device)
        source = ReaderThread(DeviceTiles(reader, tiles, device, decoder))
    elif plan.decoders.value:
        source, pool = DecoderProcesses(plan.decoders.value, pool), None
    else:
        source, prefetch = ReaderThread(prefetch or HostTiles(reader)), None
    try:
        for unused in (pool, prefetch):
            if unused is not None:
                unused.close()
    except BaseException:
        source.close()
        raise
    return source


def read_level_and_scale(
    slide: Slide, slide_mpp: float, model_mpp: float, read_tolerance: float
) -> LevelKey:
    """(read level, level-0 px per model px): the pyramid level chunks are read from and the
    scale, as `wsi.tiling.plan_chunks` plans them (known before tissue detection)."""
    level0_per_model = model_mpp / slide_mpp
    downsamples = tuple(slide.level_downsamples)
    return choose_level(downsamples, level0_per_model, read_tolerance), level0_per_model


def slide_reads(slide_path: str, slide: Slide, key: LevelKey) -> tuple[ReadFacts, JpegTiles | None]:
    """The read level `key` as the device read path sees it, and its JPEG tiles where the
    path can serve them (what it then reads); the facts say why not where it cannot."""
    level, level0_per_model = key
    ds = float(slide.level_downsamples[level])
    if not same_pixels(level0_per_model, ds):
        why = (
            f"model pixels are not level {level}'s pixels "
            f"({level0_per_model:g} level-0 px per model px, level downsample {ds:g}):"
            " resampling runs on the CPU"
        )
        return ReadFacts(unsupported=why), None
    if tuple(slide.bounds_offset) != (0, 0):
        return ReadFacts(unsupported="the slide has a bounds offset"), None
    tiles = open_jpeg_tiles(slide_path, level, slide.level_dimensions[level])
    if isinstance(tiles, Unsupported):
        return ReadFacts(unsupported=tiles.reason), None
    return ReadFacts(ycbcr=tiles.colour_safe_anywhere), tiles
