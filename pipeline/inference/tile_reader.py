"""Reading a chunk's model tiles from the slide on the CPU: the read half of a `SlideJob`,
and the tile graph's geometry of the grid it cuts (`tile_geometry`).

Light on purpose: decoder processes import it, so it needs only numpy and the slide code, and
a `TileReader` pickles to a few numbers and paths.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi_segment.address_space import ran_out
from wsi_segment.errors import SlideError
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.wsi.region_reader import level_read_box, read_model_tiles
from wsi_segment.wsi.slide import Slide, open_slide
from wsi_segment.wsi.tiff_blocks import open_level_blocks
from wsi_segment.wsi.tile_reuse import TileReuse, supports_reuse
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid


class PerThread:
    """Open handles kept per thread in `_local`, which a pickled copy leaves behind (the
    copy opens its own where it runs)."""

    _local: threading.local

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


@dataclass
class TileReader(PerThread):
    """Reads the model tiles of any chunk of one slide; each thread opens its own handle."""

    slide_path: str
    backend: str
    mpp_override: float | None
    level0_per_model: float
    read_level: int
    grid: TileGrid
    read_backend: str | None = None  # chunk reads' (None: `backend`): `fast_read_backend`
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def slide(self) -> Slide:
        """This thread's handle on the slide, opened on first use."""
        slide: Slide | None = getattr(self._local, "slide", None)
        if slide is None:
            backend = self.read_backend or self.backend
            if backend == "tiffslide":
                # Chunks at the slide edge read past it on purpose (white padding, as openslide)
                warnings.filterwarnings("ignore", message=r"location=.*is out-of-bounds")
            slide = open_slide(self.slide_path, backend=backend, mpp=self.mpp_override)
            self._local.slide = slide
        return slide

    def close_local(self) -> None:
        """Close this thread's slide handle (threads that stop reading for good)."""
        slide = getattr(self._local, "slide", None)
        if slide is not None:
            self._local.slide = None
            slide.close()

    def read_box(self, spec: ChunkSpec) -> tuple[int, int, int, int]:
        """Model-space box a chunk reads: its tissue tiles' bounding box plus the margin (each
        is resampled from its own box, so the box never changes it); else its core's."""
        s, m = self.grid.stride, self.grid.margin
        if not spec.tiles:
            x0, y0, x1, y1 = spec.core_box
            return (x0 - m, y0 - m, x1 + m, y1 + m)
        rows = [i for i, _ in spec.tiles]
        cols = [j for _, j in spec.tiles]
        return (min(cols) * s - m, min(rows) * s - m, (max(cols) + 1) * s + m,
                (max(rows) + 1) * s + m)  # fmt: skip

    def plan_tile_reuse(self, specs: list[ChunkSpec]) -> TileReuse | None:
        """A storage-tile reuser for reading these chunks in this process, or None where the
        level does not allow it or the slide fails to open (reads then surface the error)."""
        try:
            slide = self.slide()
            level = self.read_level
            tile = slide.storage_tile_size(level)
            if tile is None or not supports_reuse(slide, level, tile):
                return None
            ds = float(slide.level_downsamples[level])
            planned = [level_read_box(self.read_box(s), self.level0_per_model, ds) for s in specs]
            blocks = open_level_blocks(slide, level)
            return TileReuse(level, slide.level_dimensions[level], ds, tile, planned, blocks=blocks)
        except Exception:
            return None

    def read_tiles(self, spec: ChunkSpec, reuse: TileReuse | None = None) -> np.ndarray:
        """The chunk's tissue tiles (N, T, T, 3) uint8, in `spec.tiles` order: one level read,
        each tile resampled from its own box on the global grid, so its pixels depend on its
        grid position alone. `reuse` serves storage tiles an earlier chunk decoded."""
        boxes = tile_boxes(spec.tiles, self.grid)
        if not boxes:
            return np.empty((0, self.grid.tile, self.grid.tile, 3), dtype=np.uint8)
        slide = self.slide()
        reader = None
        if reuse is not None and reuse.level == self.read_level:
            reader = functools.partial(reuse.read, slide)
        try:
            return read_model_tiles(slide, boxes, self.level0_per_model, self.read_level, reader)
        except SlideError:
            raise
        except Exception as exc:  # decoder errors inside a region of a corrupt slide
            if ran_out(exc):  # the machine's memory, not the slide (`memory_named` says it)
                raise
            raise SlideError(
                f"{self.slide_path}: cannot read region {self.read_box(spec)} (model pixels): "
                f"{exc}. The slide file is damaged there; re-scan or re-export it."
            ) from exc


def tile_boxes(tiles: Sequence[tuple[int, int]], grid: TileGrid) -> list[tuple[int, int, int, int]]:
    """Model-space box (x0, y0, x1, y1) each grid tile (i, j) reads: `T` px centred on its core."""
    t, s, m = grid.tile, grid.stride, grid.margin
    return [(j * s - m, i * s - m, j * s - m + t, i * s - m + t) for i, j in tiles]


def tile_geometry(grid: TileGrid, gate: bool) -> Geometry:
    """The tile graph's geometry of a run on `grid`: each tile's core, downsampled."""
    return Geometry(grid.tile, grid.margin, grid.stride, grid.downsample, gate)
