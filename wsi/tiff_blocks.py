"""Storage tiles of one TIFF slide level, decoded straight from the file.

tiffslide reads a region through a zarr store over tifffile: for every storage tile an
asyncio task on zarr's event loop thread, a byte-range read, tifffile's decode, and copies
into zarr's buffer and then into the region. A read that is already aligned to storage tiles
(`wsi.tile_reuse`) needs none of that: here each tile's bytes are read with `os.pread` and
handed to the very decode function tiffslide's store calls (tifffile's page decoder, with the
page's JPEG tables and header), and each tile is handed over as the decoder made it, to be
pasted once, where the caller needs it. Same pixels by construction, and checked once per
level against the slide's own read; the saving is the machinery and the copies around the
decoder (benchmarks/RESULTS.md).

Only local files read with tiffslide, one plane of uint8 RGB tiles. A request holding a tile
that is missing from the file, or that fails to read or decode, comes back as None, and the
caller reads it through the slide as before, with its retries and its error messages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from wsi_segment.wsi.backends import tifffile_quiet

Key = tuple[int, int]  # storage tile (column, row)


class ProbeSource(Protocol):
    """What `open_level_blocks` needs from a slide (wsi.slide.Slide satisfies it)."""

    path: str
    backend: str

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...
    @property
    def level_downsamples(self) -> tuple[float, ...]: ...
    @property
    def properties(self) -> dict[str, Any]: ...

    def storage_tile_size(self, level: int) -> tuple[int, int] | None: ...

    def read_region(
        self, location_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...


class LevelBlocks:
    """Decodes the storage tiles of one level (the blocks `wsi.tile_reuse` reads); thread safe, pickles to its numbers (the
    decoder is set up again where it is used)."""

    def __init__(
        self,
        path: str,
        series: int,
        level: int,
        level_size: tuple[int, int],
        tile_size: tuple[int, int],
    ) -> None:
        self.path = path
        self.series = series
        self.level = level
        self.level_size = (int(level_size[0]), int(level_size[1]))
        self.tile_size = (int(tile_size[0]), int(tile_size[1]))
        self._lock = threading.Lock()
        self._decoder: _Decoder | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_decoder"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _get_decoder(self) -> _Decoder:
        with self._lock:
            if self._decoder is None:
                self._decoder = _Decoder.open(
                    self.path, self.series, self.level, self.level_size, self.tile_size
                )
            return self._decoder

    def read_tiles(self, keys: Sequence[Key]) -> dict[Key, np.ndarray] | None:
        """Storage tiles (column, row) as (h, w, 3) uint8 arrays, each cut to the level (edge
        tiles are views of their padded decode); None where one is missing or cannot be read
        or decoded here."""
        tw, th = self.tile_size
        lw, lh = self.level_size
        tiles: dict[Key, np.ndarray] = {}
        try:
            decoder = self._get_decoder()
            fd = os.open(self.path, os.O_RDONLY)
            try:
                for column, row in keys:
                    if not (0 <= column * tw < lw and 0 <= row * th < lh):
                        raise IndexError(f"tile {(column, row)} is outside the level")
                    tile = decoder.tile(fd, column, row)
                    if tile is None:
                        return None
                    tiles[(column, row)] = tile[: lh - row * th, : lw - column * tw]
            finally:
                os.close(fd)
        except Exception:  # read through the slide instead, which reports it properly
            return None
        return tiles


class _Decoder:
    """tifffile's decode function for one page, with where each tile's bytes are."""

    def __init__(
        self,
        decode: Callable[..., Any],
        args: dict[str, Any],
        offsets: tuple[int, ...],
        counts: tuple[int, ...],
        columns: int,
        tile_shape: tuple[int, int, int],
    ) -> None:
        self._decode = decode
        self._args = args
        self._offsets = offsets
        self._counts = counts
        self._columns = columns
        self._tile_shape = tile_shape

    @classmethod
    def open(
        cls, path: str, series: int, level: int, size: tuple[int, int], tile: tuple[int, int]
    ) -> _Decoder:
        """The decoder of the level's page; ValueError unless the level is one tiled page of
        8-bit RGB pixels of the slide's `size` and storage `tile` size."""
        import tifffile

        with tifffile_quiet(), tifffile.TiffFile(path) as tf:
            pages = tf.series[series].levels[level].pages
            page = pages[0]
            if not (
                len(pages) == 1
                and isinstance(page, tifffile.TiffPage)
                and page.is_tiled
                and int(page.imagedepth) == 1
                and int(page.samplesperpixel) == 3
                and int(page.planarconfig) == 1
                and np.dtype(page.dtype) == np.uint8
                and (int(page.imagewidth), int(page.imagelength)) == tuple(size)
                and (int(page.tilewidth), int(page.tilelength)) == tuple(tile)
            ):
                raise ValueError(f"level {level} is not one plane of 8-bit RGB tiles")
            args: dict[str, Any] = {"_fullsize": True}
            if page.jpegtables is not None:
                args["jpegtables"] = page.jpegtables
            if page.jpegheader is not None:
                args["jpegheader"] = page.jpegheader
            decode = page.decode  # a closure over the page's codec settings, not the file
            columns = -(-int(page.imagewidth) // int(page.tilewidth))
            shape = (int(page.tilelength), int(page.tilewidth), 3)
            return cls(
                decode,
                args,
                tuple(int(o) for o in page.dataoffsets),
                tuple(int(c) for c in page.databytecounts),
                columns,
                shape,
            )

    def tile(self, fd: int, column: int, row: int) -> np.ndarray | None:
        """Storage tile (column, row) as (tile h, tile w, 3) uint8; None if not stored."""
        index = row * self._columns + column
        offset, count = self._offsets[index], self._counts[index]
        if offset == 0 or count == 0:
            return None
        data = os.pread(fd, count, offset)
        if len(data) != count:
            return None
        segment = self._decode(data, index, **self._args)[0]
        if segment is None or segment.size != int(np.prod(self._tile_shape)):
            return None
        return np.asarray(segment).reshape(self._tile_shape)


def open_level_blocks(slide: ProbeSource, level: int) -> LevelBlocks | None:
    """`LevelBlocks` for `level` of a local slide read with tiffslide, or None where this
    reader does not apply or does not give the slide's own pixels (probed on one tile)."""
    if slide.backend != "tiffslide" or "://" in slide.path or not os.path.isfile(slide.path):
        return None
    tile = slide.storage_tile_size(level)
    if tile is None:
        return None
    size = slide.level_dimensions[level]
    try:
        series = int(slide.properties.get("tiffslide.series-index") or 0)
        blocks = LevelBlocks(slide.path, series, level, size, tile)
        key = ((size[0] // 2) // tile[0], (size[1] // 2) // tile[1])  # the centre tile
        got = blocks.read_tiles([key])
        if got is None or not np.array_equal(got[key], _slide_tile(slide, level, key, tile)):
            return None
    except Exception:  # any doubt: the slide's own reader
        return None
    return blocks


def _slide_tile(slide: ProbeSource, level: int, key: Key, tile: tuple[int, int]) -> np.ndarray:
    """The slide's own pixels of storage tile `key`, cut to the level, located as
    `wsi.tile_reuse` locates its reads."""
    (c, r), (tw, th), (lw, lh) = key, tile, slide.level_dimensions[level]
    x0, y0 = c * tw, r * th
    ds = float(slide.level_downsamples[level])
    size = (min(tw, lw - x0), min(th, lh - y0))
    return slide.read_region((round(x0 * ds), round(y0 * ds)), level, size)
