"""What `prepare` reads before any work starts: the model folder's metadata and the slide.

Both are checked here so that a refused model.json, a missing weights file, a slide too
large, without mpp or with a bad --roi file is said at once, before tissue detection and
before the model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.errors import ModelError
from wsi_segment.models.meta import read_model_json, weights_path
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.roi import Roi, missing_cores, slide_rois
from wsi_segment.wsi.roi_file import read_roi_file
from wsi_segment.wsi.slide import Slide, open_slide
from wsi_segment.wsi.slide_limits import check_slide_size

if TYPE_CHECKING:
    from wsi_segment.models.meta import ModelMeta


@dataclass(frozen=True)
class ModelFolder:
    """A model folder and its model.json metadata, read without torch."""

    path: Path
    meta: ModelMeta

    @property
    def geometry(self) -> tuple[int, float]:
        """(tile size, mpp) the chunks are planned for before the model loads."""
        return (int(self.meta.tile_size), float(self.meta.mpp))


@dataclass(frozen=True)
class OpenedSlide:
    """A slide opened and checked for a run: its path as given, its mpp, its --roi regions
    (and the TMA cores the file marks missing, listed in the reports, never segmented)."""

    path: str
    slide: Slide
    mpp: tuple[float, float]
    rois: list[Roi]
    missing_cores: list[Roi]


def read_model_folder(model_dir: Path) -> ModelFolder:
    """model.json's metadata, read without torch: a refused model.json or a missing weights
    file is said now, not after tissue detection."""
    if not model_dir.is_dir():
        raise ModelError(
            f"{model_dir}: model folder not found; pass --model with a folder holding "
            "model.json and model.safetensors (or omit --model for the demo model)"
        )
    doc, meta = read_model_json(model_dir)
    weights_path(model_dir, doc)
    return ModelFolder(model_dir, meta)


def open_checked_slide(slide_path: str, params: SegmentParams) -> OpenedSlide:
    """The slide, its mpp and its `--roi` regions; a slide too large, without mpp or with a
    bad --roi file is refused (and closed) before the model loads."""
    slide = open_slide(slide_path, backend=params.backend, mpp=params.mpp)
    try:
        check_slide_size(slide)  # before anything reads or plans in proportion to it
        mpp = slide.require_mpp()
        rois, missing = slide_regions(params.roi, slide) if params.roi else ([], [])
    except BaseException:
        slide.close()
        raise
    return OpenedSlide(slide_path, slide, mpp, rois, missing)


def slide_regions(roi: str | Path, slide: Slide) -> tuple[list[Roi], list[Roi]]:
    """The --roi file's regions on `slide`, and its missing TMA cores there."""
    roi_file = read_roi_file(roi)
    where = (slide.dimensions, slide.bounds_offset)
    return slide_rois(roi_file, *where), missing_cores(roi_file, *where)
