"""Inference: plan a slide's chunks, read and decode them, run the model, stitch the cores.

The entry points below load on first use (torch stays unimported until needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.lazy_exports import lazy_exports

_EXPORTS = {
    "SlideJob": "wsi_segment.pipeline.inference.chunk_job",
    "run_chunks": "wsi_segment.pipeline.inference.chunk_runner",
    "run_engine": "wsi_segment.pipeline.inference.engine",
    "ModelHandle": "wsi_segment.pipeline.inference.model_handle",
    "plan_slide": "wsi_segment.pipeline.inference.chunk_plan",
}
__all__ = ["ModelHandle", "SlideJob", "plan_slide", "run_chunks", "run_engine"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from wsi_segment.pipeline.inference.chunk_job import SlideJob
    from wsi_segment.pipeline.inference.chunk_plan import plan_slide
    from wsi_segment.pipeline.inference.chunk_runner import run_chunks
    from wsi_segment.pipeline.inference.engine import run_engine
    from wsi_segment.pipeline.inference.model_handle import ModelHandle
