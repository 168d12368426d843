"""Decode every storage tile of a slide level once across a planned sequence of reads.

Neighbouring chunks read overlapping level boxes (the halo, the resampling margin, and the
storage tiles that straddle a chunk border), so reading each box straight from the slide
decodes the shared storage tiles two or four times: ~1.5x the necessary decoding for 4 x 4
chunks of 224 px tiles at 20x. The plan of boxes is known before the first read, so this
reader counts how many planned boxes touch each storage tile, reads the tiles it lacks in
one tile-aligned region, and keeps a decoded tile only while a later box still needs it:
memory holds roughly one row of chunk borders, bounded by `max_bytes`.

Threads share one reuser. The pipeline's prefetcher reads chunks in plan order on one
thread; when a runner thread reads a chunk itself at the same moment, both may decode a
tile they share (a lock per tile in flight would cost more than that rare decode).

Pixels are identical to a direct read: only whole storage tiles are read and pasted at the
same level coordinates, and this is used only where level and level-0 coordinates map
exactly (integer downsample), so no reader rounds a location differently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np

Box = tuple[int, int, int, int]  # level px: x0, y0, x1, y1 (end exclusive)
Key = tuple[int, int]  # storage tile (col, row)
WHITE = 255


class Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Sized)


class LevelSource(Protocol):
    """What this module needs from a slide (wsi.slide.Slide satisfies it)."""

    @property
    def level_downsamples(self) -> tuple[float, ...]: ...
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    def read_region(
        self, location_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...


class BlockSource(Protocol):
    """Decodes storage tiles straight from the file (`wsi.tiff_blocks`), with the slide's own
    pixels; None where it cannot, and the slide reads them instead."""

    def read_tiles(
        self, keys: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], np.ndarray] | None: ...


def supports_reuse(slide: LevelSource, level: int, tile_size: tuple[int, int] | None) -> bool:
    """Tiled storage and an integer downsample (level px * ds is an exact level-0 px)."""
    if tile_size is None or min(tile_size) <= 1:
        return False
    return float(slide.level_downsamples[level]).is_integer()


def tiles_of(box: Box, tile_size: tuple[int, int], level_size: tuple[int, int]) -> list[Key]:
    """Storage tiles (col, row) a level box touches, inside the level only, row by row."""
    (tw, th), (lw, lh) = tile_size, level_size
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], lw), min(box[3], lh)
    if x0 >= x1 or y0 >= y1:
        return []
    return [
        (c, r)
        for r in range(y0 // th, (y1 - 1) // th + 1)
        for c in range(x0 // tw, (x1 - 1) // tw + 1)
    ]


class PlannedTiles(Generic[T]):
    """The decoded storage tiles a planned sequence of reads still needs: each tile's planned
    uses are counted, and a decoded tile is kept (as `own` copies it: a view would hold the
    whole decoded block) only while a later read needs it, within `max_bytes` (a tile that
    does not fit is decoded again: pixels never depend on the bound). What `TileReuse` keeps
    on the host, and the device read path (`pipeline.inference.device_tiles`) on the
    device; not thread safe (`TileReuse` holds its lock around it)."""

    def __init__(self, planned: Iterable[list[Key]], max_bytes: int, own: Callable[[T], T]):
        self._uses: dict[Key, int] = {}
        for keys in planned:
            for key in keys:
                self._uses[key] = self._uses.get(key, 0) + 1
        self._max_bytes, self._own = int(max_bytes), own
        self.kept: dict[Key, T] = {}
        self.kept_bytes = 0

    def spend(self, keys: list[Key], decoded: dict[Key, T]) -> None:
        """One planned use of each of `keys` is spent (`decoded`: those just decoded): keep
        tiles still needed, drop the rest."""
        for key in keys:
            left = self._uses.get(key, 0) - 1
            if left > 0:
                self._uses[key] = left
                tile = decoded.get(key)
                room = self._max_bytes - self.kept_bytes
                if tile is not None and key not in self.kept and tile.nbytes <= room:
                    self.kept[key] = self._own(tile)
                    self.kept_bytes += tile.nbytes
            else:
                self._uses.pop(key, None)
                dropped = self.kept.pop(key, None)
                if dropped is not None:
                    self.kept_bytes -= dropped.nbytes


class TileReuse:
    """A level reader shared by the threads of one process; thread safe."""

    def __init__(
        self,
        level: int,
        level_size: tuple[int, int],
        downsample: float,
        tile_size: tuple[int, int],
        planned: Iterable[Box],
        max_bytes: int = 128 << 20,
        blocks: BlockSource | None = None,
    ) -> None:
        self.level = level
        self._lw, self._lh = int(level_size[0]), int(level_size[1])
        self._ds = float(downsample)
        self._tw, self._th = int(tile_size[0]), int(tile_size[1])
        self._blocks = blocks
        keys = (self._tiles_of(box) for box in planned)
        # the storage tiles kept for their later reads (`kept_bytes`: what they hold now)
        self.planned = PlannedTiles[np.ndarray](keys, max_bytes, np.ascontiguousarray)
        self._lock = threading.Lock()
        self.tiles_decoded = 0  # storage tiles decoded (each read of a tile counts)
        self.tiles_reused = 0  # storage tiles served from memory instead
        self.blocks_direct = 0  # reads whose tiles `blocks` decoded (the rest: the slide)

    def _tiles_of(self, box: Box) -> list[Key]:
        return tiles_of(box, (self._tw, self._th), (self._lw, self._lh))

    def _tile_box(self, key: tuple[int, int]) -> Box:
        c, r = key
        x0, y0 = c * self._tw, r * self._th
        return x0, y0, min(x0 + self._tw, self._lw), min(y0 + self._th, self._lh)

    def read(self, slide: LevelSource, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of the level box at (lx, ly); white outside the level."""
        box = (int(lx), int(ly), int(lx) + int(width), int(ly) + int(height))
        keys = self._tiles_of(box)
        with self._lock:
            kept = self.planned.kept
            have = {k: kept[k] for k in keys if k in kept}
        missing = [k for k in keys if k not in have]
        decoded = self._decode(slide, missing) if missing else {}
        shape = (int(height), int(width), 3)
        if box[0] >= 0 and box[1] >= 0 and box[2] <= self._lw and box[3] <= self._lh:
            out = np.empty(shape, np.uint8)  # inside the level the tiles cover every pixel
        else:
            out = np.full(shape, WHITE, np.uint8)
        for key in keys:
            tile = have.get(key)
            if tile is None:
                tile = decoded[key]
            tx0, ty0, tx1, ty1 = self._tile_box(key)
            x0, y0 = max(tx0, box[0]), max(ty0, box[1])
            x1, y1 = min(tx1, box[2]), min(ty1, box[3])
            out[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]] = tile[
                y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0
            ]
        self._account(keys, have, decoded)
        return out

    def _decode(
        self, slide: LevelSource, keys: list[tuple[int, int]]
    ) -> dict[tuple[int, int], np.ndarray]:
        """The missing tiles: each decoded straight from the file where `blocks` can, else
        one tile-aligned read of the slide covering them (their bounding box)."""
        direct = None if self._blocks is None else self._blocks.read_tiles(keys)
        if direct is not None:
            with self._lock:
                self.tiles_decoded += len(keys)
                self.blocks_direct += 1
            return direct
        boxes = [self._tile_box(k) for k in keys]
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        location = (round(x0 * self._ds), round(y0 * self._ds))
        block = slide.read_region(location, self.level, (x1 - x0, y1 - y0))
        if block.shape != (y1 - y0, x1 - x0, 3):
            raise ValueError(f"slide returned {block.shape}, expected {(y1 - y0, x1 - x0, 3)}")
        with self._lock:
            self.tiles_decoded += len(self._tiles_of((x0, y0, x1, y1)))
        return {
            k: block[b[1] - y0 : b[3] - y0, b[0] - x0 : b[2] - x0]
            for k, b in zip(keys, boxes, strict=True)
        }

    def _account(
        self, keys: list[Key], have: dict[Key, np.ndarray], decoded: dict[Key, np.ndarray]
    ) -> None:
        with self._lock:
            self.tiles_reused += len(have)
            self.planned.spend(keys, decoded)
