"""Inference: plan a slide's chunks, read and decode them (a read source), run the model,
stitch the cores: one engine (`run_engine`), locally or in bands on a Dask cluster
(`run_bands`).

The entry points below load on first use (torch stays unimported until needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.lazy_exports import lazy_exports

_EXPORTS = {
    "SlideJob": "wsi_segment.pipeline.inference.slide_job",
    "run_bands": "wsi_segment.pipeline.inference.band_runner",
    "run_engine": "wsi_segment.pipeline.inference.engine",
    "ReadSource": "wsi_segment.pipeline.inference.engine",
    "ReaderThread": "wsi_segment.pipeline.inference.reader_thread",
    "HostTiles": "wsi_segment.pipeline.inference.host_tiles",
    "DecoderProcesses": "wsi_segment.pipeline.inference.decoder_reads",
    "ModelHandle": "wsi_segment.pipeline.inference.model_handle",
    "plan_slide": "wsi_segment.pipeline.inference.slide_plan",
}
__all__ = [
    "DecoderProcesses",
    "HostTiles",
    "ModelHandle",
    "ReadSource",
    "ReaderThread",
    "SlideJob",
    "plan_slide",
    "run_bands",
    "run_engine",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.band_runner import run_bands
    from wsi_segment.pipeline.inference.decoder_reads import DecoderProcesses
    from wsi_segment.pipeline.inference.engine import ReadSource, run_engine
    from wsi_segment.pipeline.inference.host_tiles import HostTiles
    from wsi_segment.pipeline.inference.model_handle import ModelHandle
    from wsi_segment.pipeline.inference.reader_thread import ReaderThread
    from wsi_segment.pipeline.inference.slide_job import SlideJob
    from wsi_segment.pipeline.inference.slide_plan import plan_slide
