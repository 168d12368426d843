"""Synthetic H&E-like data for tests, benchmarks and the demo model; never used at run time.

The entry points below load on first use (torch stays unimported until needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.lazy_exports import lazy_exports

_EXPORTS = {
    "write_synthetic_slide": "wsi_segment.synthetic.slides",
    "make_synthetic_dataset": "wsi_segment.synthetic.dataset",
    "SyntheticSpec": "wsi_segment.synthetic.dataset",
    "render_tissue": "wsi_segment.synthetic.textures",
}
__all__ = ["SyntheticSpec", "make_synthetic_dataset", "render_tissue", "write_synthetic_slide"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset
    from wsi_segment.synthetic.slides import write_synthetic_slide
    from wsi_segment.synthetic.textures import render_tissue
