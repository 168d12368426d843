"""A tiled TIFF-family slide level's storage tiles as complete, still compressed JPEG streams.

A batched JPEG decoder (nvJPEG on a GPU, libjpeg-turbo on the CPU, both behind
`torchvision.io.decode_jpeg`) takes whole streams and nothing else, so everything a TIFF
reader knows out of band must be in the stream: the shared JPEGTables are spliced into each
abbreviated tile stream, and a stream whose samples are RGB although its header would be
read as YCbCr (Aperio SVS) gets the APP14 marker that says RGB (`wsi.jpeg_header`). Decoding
such a stream gives exactly the pixels tifffile (tiffslide) decodes from the tile.

`open_jpeg_tiles` returns either the level's `JpegTiles` or `Unsupported` with the reason
(not JPEG, JPEG 2000, strips instead of tiles, missing tiles, a layout other than the
slide's...), so the caller reads that slide with its CPU decoders instead. Only local files:
tiles are read with `os.pread`, which threads may share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from wsi_segment.errors import JpegHeaderError
from wsi_segment.wsi.jpeg_header import ADOBE_RGB, Colour, read_header, splice_tables

JPEG = 7  # TIFF compression tag values
JPEG_2000 = {33003, 33004, 33005, 34712}  # Aperio YCbCr / RGB, JPEG 2000 (generic)
PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR = 2, 6


@dataclass(frozen=True)
class Unsupported:
    """Why a level's tiles cannot be served as JPEG streams (the caller decodes on the CPU)."""

    reason: str


@dataclass
class JpegTiles:
    """One level's tiles; pickles to its numbers (the file is reopened where it is used)."""

    path: str
    level: int
    level_size: tuple[int, int]  # (width, height) of the level in pixels
    tile_size: tuple[int, int]  # (width, height) of every storage tile (edge tiles padded)
    colour: Colour  # how the samples are coded: "rgb" (no colour transform) or "ycbcr"
    subsampling: tuple[int, int]  # (h, v) luma samples per chroma sample: (2, 2) is 4:2:0
    header_says_ycbcr: bool  # YCbCr stated by the header itself (module jpeg_header)
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    tables: bytes | None
    prefix: bytes  # segments inserted after SOI (ADOBE_RGB for RGB-coded streams)
    _fd: int | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        return state

    @property
    def grid(self) -> tuple[int, int]:
        """(columns, rows) of storage tiles."""
        (w, h), (tw, th) = self.level_size, self.tile_size
        return -(-w // tw), -(-h // th)

    @property
    def colour_safe_anywhere(self) -> bool:
        """Every decoder reads the colour right: YCbCr, stated in the header. A decoder
        that ignores APP14 (nvJPEG's colour handling is not documented for it) would turn
        RGB-coded samples into wrong colours, so those streams stay with libjpeg."""
        return self.colour == "ycbcr" and self.header_says_ycbcr

    def stream(self, col: int, row: int) -> bytes:
        """The complete JPEG stream of storage tile (col, row)."""
        cols, rows = self.grid
        if not (0 <= col < cols and 0 <= row < rows):
            raise IndexError(f"tile ({col}, {row}) is outside the {cols} x {rows} grid")
        i = row * cols + col
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, self.counts[i], self.offsets[i])
        if len(data) != self.counts[i]:
            raise OSError(f"{self.path}: tile ({col}, {row}) is cut short (truncated file)")
        return splice_tables(self.tables, data, self.prefix)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def open_jpeg_tiles(path: str, level: int, level_size: tuple[int, int]) -> JpegTiles | Unsupported:
    """The JPEG tiles of `level` of the slide at `path`, whose size the slide reports as
    `level_size`; or why not."""
    import tifffile

    if "://" in path or not os.path.isfile(path):
        return Unsupported("not a local file")
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0] if tf.series else None
            if series is None or level >= len(series.levels):
                return Unsupported(f"the TIFF's first series has no level {level}")
            pages = series.levels[level].pages
            page = pages[0]
            if len(pages) != 1 or not isinstance(page, tifffile.TiffPage):
                return Unsupported("the level has several planes (z, channels or time)")
            found = _check_page(page, level_size, tf.filehandle.size)
            if isinstance(found, Unsupported):
                return found
            tables = page.jpegtables
            tf.filehandle.seek(page.dataoffsets[0])
            first = tf.filehandle.read(page.databytecounts[0])
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        return Unsupported(f"not a readable TIFF ({exc})")
    try:
        header = read_header(splice_tables(tables, first))
    except JpegHeaderError as exc:
        return Unsupported(f"first tile: {exc}")
    tile_size = (int(page.tilewidth), int(page.tilelength))
    if not header.baseline_8bit or len(header.component_ids) != 3:
        return Unsupported("not a baseline 8-bit 3-component JPEG")
    if header.size != tile_size or header.subsampling[0] * header.subsampling[1] == 0:
        return Unsupported("JPEG frame does not match the TIFF tile")
    colour, prefix = header.guessed_colour, b""
    if int(page.photometric) == PHOTOMETRIC_RGB and not header.jfif:
        # tifffile and libtiff decode these as RGB whatever the header would say
        if header.adobe_transform == 1:
            return Unsupported("TIFF says RGB but the JPEG's APP14 says YCbCr")
        colour, prefix = "rgb", (b"" if header.guessed_colour == "rgb" else ADOBE_RGB)
    return JpegTiles(
        path=path,
        level=level,
        level_size=(int(level_size[0]), int(level_size[1])),
        tile_size=tile_size,
        colour=colour,
        subsampling=header.subsampling,
        header_says_ycbcr=header.says_ycbcr,
        offsets=tuple(int(o) for o in page.dataoffsets),
        counts=tuple(int(c) for c in page.databytecounts),
        tables=tables,
        prefix=prefix,
    )


def _check_page(page: Any, level_size: tuple[int, int], file_size: int) -> Unsupported | None:
    """The page layout this module serves: tiled, JPEG, 8-bit interleaved RGB or YCbCr."""
    compression = int(page.compression)
    if compression in JPEG_2000:
        return Unsupported("JPEG 2000 tiles (no batched JPEG 2000 decoder here)")
    if compression != JPEG:
        return Unsupported(f"{page.compression.name} compression, not JPEG")
    if not page.is_tiled or page.tiledepth != 1:
        return Unsupported("stored in strips, not tiles")
    if (page.imagewidth, page.imagelength) != tuple(level_size):
        return Unsupported("the TIFF level's size differs from the slide's")
    if page.samplesperpixel != 3 or page.planarconfig != 1 or page.bitspersample != 8:
        return Unsupported("not 8-bit interleaved 3-sample pixels")
    if int(page.photometric) not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR):
        return Unsupported(f"{page.photometric.name} photometric, not RGB or YCbCr")
    counts, offsets = page.databytecounts, page.dataoffsets
    if not counts or min(counts) == 0:
        return Unsupported("some tiles are missing (sparse TIFF)")
    if max(o + c for o, c in zip(offsets, counts, strict=True)) > file_size:
        return Unsupported("tiles point past the end of the file (truncated)")
    return None
