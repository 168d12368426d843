"""What a local run starts reading while its model loads, as its plan says.

`prepare` (pipeline/prepare.py) starts them right after the plan is decided, hands them the
planned chunks once tissue is detected, and hands them on to the `PreparedSlide`; `infer`
gives them to the engine's read source, which adopts and closes them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.machine import Machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.read_policy import GPU
from wsi_segment.pipeline.run_policy import ExecutionPlan
from wsi_segment.pipeline.startup import read_overlay_thumbnail
from wsi_segment.pipeline.threads import Background, stop_wait_s
from wsi_segment.wsi.slide import Slide
from wsi_segment.wsi.tiling import ChunkSpec


@dataclass
class EarlyReaders:
    """What a local run starts reading while the model loads, as its plan says: the engine's
    decoder processes (`DecodePool`, spawned while tissue is detected where cores are free),
    else the prefetcher and the overlay's thumbnail; nothing for a cluster's plan or reads on
    the model's device. Whatever is not handed to the PreparedSlide is closed on error."""

    pool: DecodePool | None = None
    prefetcher: HostTiles | None = None
    thumb: Background[np.ndarray] | None = None
    decoders: int = 0
    prefetch: bool = False
    stop_wait: float | None = None  # `close`'s wait for the thumbnail (`threads.stop_wait_s`)

    @classmethod
    def start(
        cls,
        policy: ExecutionPlan | None,
        machine: Machine,
        slide_path: str,
        slide: Slide,
        params: SegmentParams,
    ) -> EarlyReaders:
        if policy is None:
            return cls()
        decoders = policy.decoders.value
        readers = cls(decoders=decoders, prefetch=not decoders and policy.read_device.value != GPU)
        if readers.prefetch:
            # openslide decoding and PIL's reduce release the GIL: this runs beside the import
            readers.thumb = Background(
                read_overlay_thumbnail, slide_path, slide.backend, params.mpp
            )
            readers.stop_wait = stop_wait_s(slide_path)
        if decoders and decoders < machine.cores:
            # they import while tissue is detected, on the cores detection leaves free (with
            # none free they would only slow it down: then they spawn once planned)
            readers.pool = DecodePool(decoders)
        return readers

    def assign(self, reader: TileReader, specs: list[ChunkSpec]) -> None:
        """Hand the planned chunks to the decoders or the prefetcher."""
        if self.decoders and specs:
            self.pool = self.pool or DecodePool(self.decoders)
            self.pool.assign(reader, specs)
        elif self.prefetch and specs:
            self.prefetcher = HostTiles(reader)
            self.prefetcher.start(specs)
        if self.pool is not None and self.pool.specs is None:  # nothing to read
            self.pool.close()
            self.pool = None

    def timings(self) -> dict[str, float]:
        return {"decoder_spawn_s": self.pool.spawn_s} if self.pool is not None else {}

    def close(self) -> None:
        """Stop what was started (after an error): a thread in a remote read is waited for as
        `threads.stop_wait_s` says."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        if self.pool is not None:
            self.pool.close()
        if self.thumb is not None:
            with contextlib.suppress(BaseException):  # a second Ctrl-C ends the wait
                self.thumb.wait(self.stop_wait)
