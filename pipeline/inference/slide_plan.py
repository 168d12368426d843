"""Planning a slide's chunks from model.json's geometry, before the model has loaded, so
planning and chunk reads overlap the model load."""

from __future__ import annotations

from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.roi import Roi, restrict_to_rois
from wsi_segment.wsi.slide import Slide
from wsi_segment.wsi.slide_path import absolute_slide_path
from wsi_segment.wsi.tiling import ChunkPlan, TileGrid, plan_chunks
from wsi_segment.wsi.tissue import TissueMask, detect_tissue, whole_slide


def slide_tissue(slide: Slide, params: SegmentParams, rois: list[Roi]) -> TissueMask:
    """What runs: detected tissue (`--tissue auto`) or the whole slide (`all`), cut to the
    `--roi` regions when given (read before the model starts loading)."""
    tissue = whole_slide(slide) if params.tissue == "all" else detect_tissue(slide)
    if rois:
        tissue = restrict_to_rois(tissue, rois, slide.dimensions)
    return tissue


def plan_slide(
    slide: Slide,
    mpp: tuple[float, float],
    geometry: tuple[int, float],
    params: SegmentParams,
    tissue: TissueMask,
    chunk_tiles: int,
) -> tuple[TileGrid, ChunkPlan]:
    """The tile grid (validated) and the tissue chunks, `chunk_tiles` x `chunk_tiles` tiles."""
    tile, model_mpp = geometry
    grid = slide_grid(tile, params)
    tolerance = params.read_tolerance
    return grid, plan_chunks(slide, mpp[0], model_mpp, grid, chunk_tiles, tissue, tolerance)


def slide_grid(tile: int, params: SegmentParams) -> TileGrid:
    """The tile grid of `tile` px tiles under the options (`ConfigError` for an overlap or
    output downsample it cannot take)."""
    grid = TileGrid(tile=tile, overlap=params.overlap, downsample=params.output_downsample)
    grid.validate()
    return grid


def plan_reader(
    slide_path: str,
    slide: Slide,
    params: SegmentParams,
    planned: ChunkPlan,
    grid: TileGrid,
    read_backend: str | None,
) -> TileReader:
    """The reader of the planned chunks, for what reads before the model has loaded. A local
    path is made absolute: decoder processes and Dask workers may run in another directory."""
    return TileReader(
        slide_path=absolute_slide_path(slide_path),
        backend=slide.backend,
        mpp_override=params.mpp,
        level0_per_model=planned.level0_per_model,
        read_level=planned.read_level,
        grid=grid,
        read_backend=read_backend,
    )
