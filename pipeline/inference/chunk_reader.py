"""Reading a slide's chunks into tiles: the read half of a `SlideJob`, light on purpose.

The engine's decoder processes are spawned, so every module they import costs each
of them start-up time; this one needs only numpy and the slide code (no torch, zarr, shapely
or rasterio), and a `ChunkReader` pickles to a few numbers and paths (no tissue mask, no
model), so a decoder starts reading as soon as it is spawned.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi_segment.errors import SlideError
from wsi_segment.wsi.region_reader import level_read_box, read_model_box
from wsi_segment.wsi.slide import Slide, open_slide
from wsi_segment.wsi.tile_reuse import TileReuse, supports_reuse
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid


@dataclass
class ChunkReader:
    """What reading any chunk of one slide needs; each thread opens its own slide handle."""

    slide_path: str
    backend: str
    mpp_override: float | None
    level0_per_model: float
    read_level: int
    grid: TileGrid
    # Backend for chunk reads (None: `backend`), see `wsi.read_backend.fast_read_backend`.
    read_backend: str | None = None
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

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
        """Model-space box a chunk reads: its tissue tiles' bounding box plus the margin."""
        grid = self.grid
        x0, y0, x1, y1 = spec.core_box
        return tiles_read_box(spec.tiles, grid) or (
            x0 - grid.margin,
            y0 - grid.margin,
            x1 + grid.margin,
            y1 + grid.margin,
        )

    def plan_tile_reuse(self, specs: list[ChunkSpec]) -> TileReuse | None:
        """A storage-tile reuser for reading these chunks in this process (None: not
        possible for this slide level, e.g. untiled storage or a non-integer downsample)."""
        slide = self.slide()
        level = self.read_level
        tile = slide.storage_tile_size(level)
        if tile is None or not supports_reuse(slide, level, tile):
            return None
        ds = float(slide.level_downsamples[level])
        planned = [level_read_box(self.read_box(s), self.level0_per_model, ds) for s in specs]
        return TileReuse(level, slide.level_dimensions[level], ds, tile, planned)

    def read(
        self, spec: ChunkSpec, reuse: TileReuse | None = None
    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The model-space image of a chunk's tissue tiles (plus margin) and its box.

        `reuse` serves storage tiles that an earlier chunk already decoded (same pixels).
        """
        read_box = self.read_box(spec)
        slide = self.slide()
        reader = None
        if reuse is not None and reuse.level == self.read_level:

            def reader(lx: int, ly: int, w: int, h: int) -> np.ndarray:
                return reuse.read(slide, lx, ly, w, h)

        try:
            image = read_model_box(
                slide, read_box, self.level0_per_model, self.read_level, reader=reader
            )
        except SlideError:
            raise
        except Exception as exc:  # decoder errors inside a region of a corrupt slide
            raise SlideError(
                f"{self.slide_path}: cannot read region {read_box} (model pixels): {exc}. "
                "The slide file is damaged there; re-scan or re-export it."
            ) from exc
        return image, read_box


def tiles_read_box(
    tiles: tuple[tuple[int, int], ...], grid: TileGrid
) -> tuple[int, int, int, int] | None:
    """Model-space box read for a chunk: the tissue tiles' bounding box plus the margin.

    Only tissue tiles run, so reading the whole chunk would decode slide that no tile uses
    (up to 2x per tile at tissue edges). Pixels of a box depend only on global coordinates
    (wsi.region_reader), so a smaller box gives the tiles the same values.
    """
    if not tiles:
        return None
    s, m = grid.stride, grid.margin
    rows = [i for i, _ in tiles]
    cols = [j for _, j in tiles]
    return (min(cols) * s - m, min(rows) * s - m, (max(cols) + 1) * s + m, (max(rows) + 1) * s + m)


def cut_tiles(
    image: np.ndarray,
    read_origin: tuple[int, int],
    tiles_ij: list[tuple[int, int]],
    grid: TileGrid,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Tiles (N, T, T, 3) uint8 from a chunk image whose top-left is model pixel `read_origin`.

    `out`: where to put them (e.g. a shared-memory slot of the engine); else new."""
    ox, oy = read_origin
    t, s, m = grid.tile, grid.stride, grid.margin
    if out is None:
        out = np.empty((len(tiles_ij), t, t, 3), dtype=np.uint8)
    for n, (i, j) in enumerate(tiles_ij):
        x, y = j * s - m - ox, i * s - m - oy
        out[n] = image[y : y + t, x : x + t]
    return out
