"""The read source a plan names, made for one engine: locally or in a Dask band.

One choice for both places: the device read path where the plan reads on the model's device
and the read level's JPEG tiles are at hand, decoder processes where it names them, else the
reader thread. A local run hands in what it started early (the decoders, the prefetcher);
whichever the source does not adopt is closed here, so nothing started is left running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.decode_pool import DecodePool
    from wsi_segment.pipeline.inference.engine import ReadSource
    from wsi_segment.pipeline.inference.model_handle import ModelHandle
    from wsi_segment.pipeline.inference.tile_prefetch import TilePrefetcher
    from wsi_segment.pipeline.inference.tile_reader import TileReader
    from wsi_segment.pipeline.run_policy import ExecutionPlan
    from wsi_segment.wsi.raw_tiles import JpegTiles


def plan_source(
    plan: ExecutionPlan,
    model: ModelHandle,
    reader: TileReader,
    tiles: JpegTiles | None,
    pool: DecodePool | None = None,
    prefetch: TilePrefetcher | None = None,
) -> ReadSource:
    """What reads the engine's tiles, as `plan` says: the device read path (on `tiles`, with
    `model`'s device), decoder processes (adopting `pool`, decoders started early), or the
    reader thread on `reader` (adopting `prefetch`, chunks read since planning). The source
    owns what it adopted; the rest is closed, and so is the source if that fails."""
    # imported here: they import torch, which a rerun of finished slides never loads
    from wsi_segment.pipeline.inference.decoder_reads import DecoderProcesses
    from wsi_segment.pipeline.inference.reader_thread import HostTiles, ReaderThread

    source: ReadSource
    decoder = plan.device_decoder
    if decoder is not None and tiles is not None:
        from wsi_segment.pipeline.inference.device_tiles import DeviceTiles  # torch: loaded

        device = model.get().model.device
        source = ReaderThread(DeviceTiles(reader, tiles, device, decoder))
    elif plan.decoders.value:
        source, pool = DecoderProcesses(plan.decoders.value, pool), None
    else:
        source, prefetch = ReaderThread(HostTiles(reader, prefetch)), None
    try:
        for unused in (pool, prefetch):
            if unused is not None:
                unused.close()
    except BaseException:
        source.close()
        raise
    return source
