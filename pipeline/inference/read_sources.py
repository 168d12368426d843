"""The read source a plan names, made for one engine (locally or in a Dask band), and what
the slide offers the device read path (`slide_reads`: the facts `pipeline.run_policy` decides
it from, examined once where the run is planned). A local run hands in what it started early
(the decoders, the host reads); whatever the source does not adopt is closed here. Nothing
here imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.pipeline.read_policy import ReadFacts
from wsi_segment.wsi.raw_tiles import JpegTiles, Unsupported, open_jpeg_tiles
from wsi_segment.wsi.region_reader import choose_level, same_pixels
from wsi_segment.wsi.slide import Slide

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.decode_pool import DecodePool
    from wsi_segment.pipeline.inference.engine import ReadSource
    from wsi_segment.pipeline.inference.host_tiles import HostTiles
    from wsi_segment.pipeline.inference.model_handle import ModelHandle
    from wsi_segment.pipeline.inference.tile_reader import TileReader
    from wsi_segment.pipeline.run_policy import ExecutionPlan

LevelKey = tuple[int, float]  # (read level, level-0 px per model px) a choice was made for


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
    # imported here: they import torch, which a rerun of finished slides never loads
    from wsi_segment.pipeline.inference.decoder_reads import DecoderProcesses
    from wsi_segment.pipeline.inference.host_tiles import HostTiles
    from wsi_segment.pipeline.inference.reader_thread import ReaderThread

    source: ReadSource
    decoder = plan.device_decoder
    if decoder is not None and tiles is not None:
        from wsi_segment.pipeline.inference.device_tiles import DeviceTiles  # torch: loaded

        device = model.get().device
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


def read_level_and_scale(slide: Slide, slide_mpp: float, model_mpp: float) -> LevelKey:
    """(read level, level-0 px per model px): the pyramid level chunks are read from and the
    scale, as `wsi.tiling.plan_chunks` plans them (known before tissue detection)."""
    level0_per_model = model_mpp / slide_mpp
    return choose_level(tuple(slide.level_downsamples), level0_per_model), level0_per_model


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
