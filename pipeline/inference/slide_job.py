"""One slide's job for the engine: what a chunk is read from, and how its cores are stitched,
written and turned into polygons.

A `SlideJob` is picklable: on a Dask worker it reopens the slide and the zarr store and loads
the model once per process. Each write unit writes whole zarr chunks it alone owns, so
parallel writers never collide and a recomputed chunk writes identical bytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.tile_reader import PerThread, TileReader, tile_geometry
from wsi_segment.pipeline.outputs.chunk_summary import (
    NODATA,
    BlockPolygons,
    ChunkOutcome,
    summarise_block,
)
from wsi_segment.pipeline.outputs.chunk_writes import write_chunk_by_chunk
from wsi_segment.pipeline.outputs.label_image import label_values
from wsi_segment.wsi.tiling import STORE_TILES, ChunkSpec, TileGrid


@dataclass
class ReducedTiles:
    """Outputs as stored: uint8 probabilities (..., K, h, w) and labels (..., h, w), per tile
    (N leading, h = w = S/d) or a chunk's block, and the bytes they cost from the device."""

    probs: np.ndarray
    labels: np.ndarray
    bytes_from_model: int


def stitch_cores(
    cores: np.ndarray,
    tiles_ij: list[tuple[int, int]],
    core_box: tuple[int, int, int, int],
    grid: TileGrid,
    fill: int,
) -> np.ndarray:
    """Each tile's reduced core (..., S/d, S/d) placed in the chunk's block over `core_box`;
    tiles not listed (no tissue) stay `fill`. Centre-crop on the global tile grid
    (docs/architecture.md): an output pixel comes from one tile's core, whatever the chunk."""
    d, s = grid.downsample, grid.stride
    cx, cy, cx1, cy1 = core_box
    lead = cores.shape[1:-2]
    out = np.full((*lead, (cy1 - cy) // d, (cx1 - cx) // d), fill, dtype=cores.dtype)
    so = s // d
    for n, (i, j) in enumerate(tiles_ij):
        oy, ox = (i * s - cy) // d, (j * s - cx) // d
        out[..., oy : oy + so, ox : ox + so] = cores[n]
    return out


@dataclass
class SlideJob(PerThread):
    """Everything a worker needs to run any chunk of one slide."""

    reader: TileReader  # the read half: also what a decoder process is sent
    n_classes: int
    gate: bool
    zarr_path: str
    labels_path: str  # the level-0 label array (`outputs.label_image`), written block for block
    tissue_mask: np.ndarray  # bool (h, w) at tissue_downsample level-0 px per mask px
    tissue_downsample: float
    level0_per_output: float
    model: ModelHandle
    # Polygons are simplified per chunk as it is written (output px, 0: exact), so the end
    # of the run only unions them; the exact ones are kept too for a `--roi` run's areas.
    simplify_tolerance: float
    keep_exact_polygons: bool
    # The slide's (width, height) in output px: class areas count only the part of the
    # raster's last column and row on the slide (`chunk_summary.output_extent`).
    slide_extent_out: tuple[float, float]
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def grid(self) -> TileGrid:
        return self.reader.grid

    @property
    def slide_path(self) -> str:
        return self.reader.slide_path

    @property
    def geometry(self) -> Geometry:
        """What the tile graph runs at for this slide."""
        return tile_geometry(self.grid, self.gate)

    def _array(self, path: str | None = None) -> zarr.Array[Any]:
        """This thread's handle on the probability array (or the array at `path`)."""
        path = path or self.zarr_path
        arrays: dict[str, zarr.Array[Any]] = vars(self._local).setdefault("arrays", {})
        if path not in arrays:
            arrays[path] = zarr.open_array(path, mode="r+")
        return arrays[path]

    @property
    def polygon_cell(self) -> int:
        """Output px a side of the squares polygons are traced and simplified in: a zarr chunk,
        which every write unit holds whole, so the pieces do not depend on the chunk size."""
        return STORE_TILES * (self.grid.stride // self.grid.downsample)

    def tissue_block(self, out_box: tuple[int, int, int, int]) -> np.ndarray:
        """Tissue mask sampled (nearest) at the centres of the output pixels of a box."""
        x0, y0, x1, y1 = out_box
        scale = self.level0_per_output / self.tissue_downsample
        h, w = self.tissue_mask.shape
        cols = np.minimum(((np.arange(x0, x1) + 0.5) * scale).astype(np.int64), w - 1)
        rows = np.minimum(((np.arange(y0, y1) + 0.5) * scale).astype(np.int64), h - 1)
        return self.tissue_mask[np.ix_(rows, cols)]

    def stitch_block(self, spec: ChunkSpec, reduced: ReducedTiles) -> ReducedTiles:
        """The reduced cores of `spec.tiles` (in order) as the block over `spec.out_box`: 0
        and NODATA outside tissue."""
        tiles = list(spec.tiles)
        probs = stitch_cores(reduced.probs, tiles, spec.core_box, self.grid, fill=0)
        labels = stitch_cores(reduced.labels, tiles, spec.core_box, self.grid, fill=NODATA)
        if not tiles:  # stitch_cores cannot know K without a tile
            probs = np.zeros((self.n_classes, *labels.shape), np.uint8)
        ox0, oy0, ox1, oy1 = spec.out_box
        probs = probs[:, : oy1 - oy0, : ox1 - ox0]
        labels = labels[: oy1 - oy0, : ox1 - ox0]
        tissue = self.tissue_block(spec.out_box)
        probs[:, ~tissue] = 0
        labels[~tissue] = NODATA
        return ReducedTiles(probs, labels, reduced.bytes_from_model)

    def finish_block(
        self, spec: ChunkSpec, reduced: ReducedTiles, polygons: BlockPolygons | None
    ) -> ChunkOutcome:
        """Stitch a write unit, write the zarr chunks it owns, summarise it; its polygons
        traced by `polygons` (None: in this thread)."""
        block = self.stitch_block(spec, reduced)
        ox0, oy0 = spec.out_box[:2]
        write_chunk_by_chunk(self._array(), (0, oy0, ox0), block.probs)
        write_chunk_by_chunk(self._array(self.labels_path), (oy0, ox0), label_values(block.labels))
        outcome = summarise_block(
            spec,
            len(spec.tiles),
            block.labels,
            block.probs,
            self.n_classes,
            self.simplify_tolerance,
            self.keep_exact_polygons,
            self.slide_extent_out,
            cell=self.polygon_cell,
            polygons=polygons,
        )
        outcome.bytes_from_model = block.bytes_from_model
        return outcome
