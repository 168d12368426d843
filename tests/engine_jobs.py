"""One way for the engine's tests to build a `SlideJob` without `prepare`: over a slide's
chunk plan, reading at the plan's level, writing into a new zarr store and label image (or
into none, for tests that only stitch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.outputs.chunk_summary import output_extent
from wsi_segment.pipeline.outputs.label_image import create_label_image, label_level0_path
from wsi_segment.pipeline.outputs.ome_zarr import create_probability_store, level0_path
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import ChunkPlan, TileGrid
from wsi_segment.wsi.tissue import TissueMask


def planned_job(
    slide_path: Path,
    backend: str,
    plan: ChunkPlan,
    grid: TileGrid,
    model: Any,  # a ModelHandle
    classes: Sequence[str],
    *,
    store: Path | None,
    tissue: TissueMask | None,
    colors: Sequence[Sequence[int]] = (),
    model_mpp: float = 1.0,
    mpp_override: float | None = None,
    gate: bool = True,
) -> SlideJob:
    """A job over `plan` of the slide at `slide_path` (read with `backend`, its mpp
    `mpp_override` where given) by `model`. `store`: the zarr
    store created for it (classes, `colors`, pixels of `model_mpp` x the grid's downsample);
    None: no store (the job only stitches). `tissue` None: the whole slide is tissue."""
    per_output = plan.level0_per_model * grid.downsample
    zarr_path = labels_path = "unused"
    if store is not None:
        create_probability_store(
            store,
            list(classes),
            [tuple(c) for c in colors],
            plan.output_shape,
            (plan.chunk_out,) * 2,
            model_mpp * grid.downsample,
            per_output,
        )
        create_label_image(store)
        zarr_path, labels_path = str(level0_path(store)), str(label_level0_path(store))
    mask, downsample = (
        (np.ones((1, 1), bool), 1e9) if tissue is None else (tissue.mask, tissue.downsample)
    )
    reader = TileReader(
        slide_path=str(slide_path),
        backend=backend,
        mpp_override=mpp_override,
        level0_per_model=plan.level0_per_model,
        read_level=plan.read_level,
        grid=grid,
    )
    return SlideJob(
        reader=reader,
        n_classes=len(classes),
        gate=gate,
        zarr_path=zarr_path,
        labels_path=labels_path,
        tissue_mask=mask,
        tissue_downsample=float(downsample),
        level0_per_output=per_output,
        model=model,
        # a run's polygons with the default options, no `--roi`
        simplify_tolerance=SegmentParams().simplify_tolerance,
        keep_exact_polygons=False,
        slide_extent_out=slide_extent_out(slide_path, backend, per_output),
    )


def slide_extent_out(
    slide_path: Path, backend: str, level0_per_output: float
) -> tuple[float, float]:
    """The slide's (width, height) in output px, as a run's job gets it."""
    slide = open_slide(slide_path, backend)
    try:
        return output_extent(slide.dimensions, level0_per_output)
    finally:
        slide.close()
