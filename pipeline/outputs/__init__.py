"""Outputs: the zarr store, polygons, GeoJSON, overlay, OME-TIFF, summary and the output folder.

The entry points below load on first use (torch stays unimported until needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.lazy_exports import lazy_exports

_EXPORTS = {
    "write_outputs": "wsi_segment.pipeline.outputs.finish_outputs",
    "OutputDir": "wsi_segment.pipeline.outputs.output_dir",
    "create_probability_store": "wsi_segment.pipeline.outputs.ome_zarr",
    "write_summary": "wsi_segment.pipeline.outputs.summary",
}
__all__ = ["OutputDir", "create_probability_store", "write_outputs", "write_summary"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from wsi_segment.pipeline.outputs.finish_outputs import write_outputs
    from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store
    from wsi_segment.pipeline.outputs.output_dir import OutputDir
    from wsi_segment.pipeline.outputs.summary import write_summary
