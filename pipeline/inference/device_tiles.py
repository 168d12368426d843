"""A chunk's model tiles assembled on the model's device from its decoded storage tiles.

The GPU read path: the compressed storage tiles a chunk's read box touches are decoded in
one batch (`pipeline.inference.jpeg_batch`), pasted into the box on the device (white
outside the level, as `wsi.slide.Slide` reads), and cut into the chunk's model tiles with
the geometry `ChunkReader.read` and `cut_tiles` use: the same tiles, byte for byte where
the same decoder runs. Only where model pixels are the read level's pixels (no resampling);
elsewhere, and for slides whose tiles `wsi.raw_tiles` cannot serve, `open_device_tiles`
says why and the CPU decoders read the slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wsi_segment.pipeline.inference.chunk_reader import ChunkReader
from wsi_segment.pipeline.inference.jpeg_batch import (
    Decoder,
    copy_into,
    decode_tiles,
    tile_decoder,
)
from wsi_segment.wsi.raw_tiles import JpegTiles, Unsupported, open_jpeg_tiles
from wsi_segment.wsi.region_reader import same_pixels
from wsi_segment.wsi.tiling import ChunkSpec

WHITE = 255


@dataclass
class DeviceTiles:
    """Reads chunks' model tiles onto `device`; one per slide and device."""

    reader: ChunkReader
    tiles: JpegTiles
    device: torch.device

    @property
    def decoder(self) -> Decoder:
        return tile_decoder(self.tiles, self.device)

    def read_tiles(self, spec: ChunkSpec) -> torch.Tensor:
        """(len(spec.tiles), T, T, 3) uint8 on the device, in `spec.tiles` order."""
        grid = self.reader.grid
        x0, y0, x1, y1 = self.reader.read_box(spec)  # level px: model px are level px
        box = self._paste(x0, y0, x1, y1)
        t, s, m = grid.tile, grid.stride, grid.margin
        if not spec.tiles:
            return torch.empty((0, t, t, 3), dtype=torch.uint8, device=self.device)
        # every grid tile inside the box as one strided view, (rows, cols, T, T, 3); the
        # box starts at a tile's corner (read_box), so tile (i, j) is view[i - i0, j - j0]
        h, w = y1 - y0, x1 - x0
        view = box.as_strided(
            ((h - t) // s + 1, (w - t) // s + 1, t, t, 3), (s * w * 3, s * 3, w * 3, 3, 1)
        )
        i0, j0 = (y0 + m) // s, (x0 + m) // s
        rows = [i - i0 for i, _ in spec.tiles]
        cols = [j - j0 for _, j in spec.tiles]
        if self.device.type == "cpu":  # numpy's gather of uint8 is far faster than torch's
            return torch.from_numpy(view.numpy()[rows, cols])
        index = torch.tensor([rows, cols], dtype=torch.long).to(self.device)
        return view[index[0], index[1]]  # one gather: (N, T, T, 3), contiguous

    def _paste(self, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
        """The level box (x0, y0)-(x1, y1) as (H, W, 3) uint8 on the device."""
        out = torch.empty((y1 - y0, x1 - x0, 3), dtype=torch.uint8, device=self.device)
        if self.device.type == "cpu":  # as copy_into: numpy fills faster than torch here
            out.numpy().fill(WHITE)
        else:
            out.fill_(WHITE)
        (tw, th), (lw, lh) = self.tiles.tile_size, self.tiles.level_size
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, lw), min(y1, lh)
        if ix0 >= ix1 or iy0 >= iy1:
            return out
        keys = [
            (c, r)
            for r in range(iy0 // th, (iy1 - 1) // th + 1)
            for c in range(ix0 // tw, (ix1 - 1) // tw + 1)
        ]
        decoded = decode_tiles(self.tiles, keys, self.device)
        for (c, r), tile in zip(keys, decoded, strict=True):
            # the part of the tile inside both the level and the box, in level px
            px0, py0 = max(c * tw, ix0), max(r * th, iy0)
            px1, py1 = min((c + 1) * tw, ix1), min((r + 1) * th, iy1)
            copy_into(
                out[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0],
                tile[py0 - r * th : py1 - r * th, px0 - c * tw : px1 - c * tw],
            )
        return out

    def close(self) -> None:
        self.tiles.close()


def open_device_tiles(reader: ChunkReader, device: torch.device) -> DeviceTiles | Unsupported:
    """Device reads for this reader's chunks, or why the CPU decoders must read them."""
    slide = reader.slide()
    level = reader.read_level
    ds = float(slide.level_downsamples[level])
    if not same_pixels(reader.level0_per_model, ds):
        return Unsupported(
            f"model pixels are not level {level}'s pixels "
            f"({reader.level0_per_model:g} level-0 px per model px, level downsample {ds:g}):"
            " resampling runs on the CPU"
        )
    if slide.bounds_offset != (0, 0):
        return Unsupported("the slide has a bounds offset")
    tiles = open_jpeg_tiles(reader.slide_path, level, slide.level_dimensions[level])
    if isinstance(tiles, Unsupported):
        return tiles
    return DeviceTiles(reader, tiles, device)
