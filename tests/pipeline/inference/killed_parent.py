"""The parent process of test_band_runner's killed-parent test, in a module of its own: a
spawned child imports the module of its target, and this one imports no torch (the test
module's imports cost a child ~5 s of CPU)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Sequence

from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.wsi.tiling import ChunkSpec


def pool_then_wait(
    reader: TileReader, specs: Sequence[ChunkSpec], out: multiprocessing.Queue
) -> None:
    """Start decoders that fill the ring and wait for free slots, report them, then wait to
    be killed (as a Dask worker killed mid-band)."""
    pool = DecodePool(2, reader, specs)
    out.put([p.pid for p in pool.procs])
    threading.Event().wait()
