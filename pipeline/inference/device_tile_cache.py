"""Decode each storage tile once per slide on the device read path, in bounded memory.

Neighbouring chunks share the storage tiles under their halo (and those that straddle a
chunk border), so decoding each chunk's tiles afresh decodes those two or four times. As
`wsi.tile_reuse` does for the CPU decoders, the reads are planned before the first one: the
cache counts how many planned read boxes touch each storage tile, decodes the tiles a read
lacks in one batch, and keeps a decoded tile (on the model's device) only while a later read
still needs it, within `max_bytes`: roughly one row of chunk borders. A tile that does not
fit is decoded again when needed, so pixels never depend on the bound.

One reader thread uses it (`pipeline.inference.reader_thread`): no lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from wsi_segment.pipeline.inference.jpeg_batch import decode_tiles
from wsi_segment.wsi.raw_tiles import JpegTiles

Box = tuple[int, int, int, int]  # level px: x0, y0, x1, y1 (end exclusive)
Key = tuple[int, int]  # storage tile (col, row)


def tiles_of(box: Box, tile_size: tuple[int, int], level_size: tuple[int, int]) -> list[Key]:
    """Storage tiles (col, row) a level box touches inside the level, row by row."""
    (tw, th), (lw, lh) = tile_size, level_size
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], lw), min(box[3], lh)
    if x0 >= x1 or y0 >= y1:
        return []
    return [
        (c, r)
        for r in range(y0 // th, (y1 - 1) // th + 1)
        for c in range(x0 // tw, (x1 - 1) // tw + 1)
    ]


class DeviceTileCache:
    """Decoded storage tiles of one level kept on `device` for the planned reads to come."""

    def __init__(
        self,
        tiles: JpegTiles,
        device: torch.device,
        planned: Iterable[Box],
        max_bytes: int = 128 << 20,
    ) -> None:
        self._tiles, self._device, self._max_bytes = tiles, device, int(max_bytes)
        self._uses: dict[Key, int] = {}
        for box in planned:
            for key in tiles_of(box, tiles.tile_size, tiles.level_size):
                self._uses[key] = self._uses.get(key, 0) + 1
        self._cache: dict[Key, torch.Tensor] = {}
        self.cached_bytes = 0
        self.tiles_decoded = 0  # storage tiles decoded (each decode of a tile counts)
        self.tiles_reused = 0  # storage tiles served from the cache instead

    def take(self, keys: Sequence[Key]) -> list[torch.Tensor]:
        """The decoded tiles `keys` (tile_h, tile_w, 3) uint8 on the device, in order; one
        planned use of each is spent (a tile no later read needs is dropped)."""
        missing = [k for k in keys if k not in self._cache]
        decoded = (
            dict(zip(missing, decode_tiles(self._tiles, missing, self._device), strict=True))
            if missing
            else {}
        )
        out = [self._cache[k] if k in self._cache else decoded[k] for k in keys]
        self.tiles_decoded += len(missing)
        self.tiles_reused += len(keys) - len(missing)
        for key in keys:
            left = self._uses.get(key, 0) - 1
            if left > 0:
                self._uses[key] = left
                if key in decoded:
                    self._keep(key, decoded[key])
            else:
                self._uses.pop(key, None)
                dropped = self._cache.pop(key, None)
                if dropped is not None:
                    self.cached_bytes -= dropped.nbytes
        return out

    def _keep(self, key: Key, tile: torch.Tensor) -> None:
        """Keep a copy of its own (a view would hold the whole decoded batch), if it fits."""
        if self.cached_bytes + tile.nbytes > self._max_bytes:
            return
        # on the CPU through numpy: it copies uint8 blocks far faster than torch
        cpu = tile.device.type == "cpu"
        own = torch.from_numpy(tile.numpy().copy()) if cpu else tile.clone()
        self._cache[key] = own
        self.cached_bytes += own.nbytes
