"""Work that `pipeline.segment.prepare` runs beside the model load.

Importing torch, timm and smp is most of a small run's fixed cost and holds one core; the
model loads in a `Background` thread while the main thread detects tissue and plans, and
the overlay's thumbnail is read on the other core meanwhile (the imports run with the
collector paused: `wsi_segment.gc_pause.gc_paused`).
"""

from __future__ import annotations

import numpy as np

from wsi_segment.wsi.slide import open_slide


def read_overlay_thumbnail(slide_path: str, backend: str, mpp: float | None) -> np.ndarray:
    """overlay.png's thumbnail, with a handle of its own (the main thread detects tissue);
    openslide decoding and PIL's reduce release the GIL, so this runs beside the import."""
    from wsi_segment.pipeline.outputs.finish_outputs import THUMB_SIZE, overlay_thumbnail

    with open_slide(slide_path, backend=backend, mpp=mpp) as slide:
        return overlay_thumbnail(slide, THUMB_SIZE)
