"""A chunk's model tiles assembled on the model's device from its decoded storage tiles.

The device read path, where model pixels are the read level's pixels: the storage tiles a
chunk's read box touches are decoded in one batch (`decode_streams`), pasted into the box
(white outside the level, as `wsi.slide.Slide` reads) and cut into the chunk's model tiles as
`TileReader.read_tiles` cuts them: the same tiles, byte for byte where the same decoder runs.
nvJPEG decodes on CUDA only streams whose header states YCbCr (its handling of "RGB, no
transform" is not documented); the others decode with libjpeg-turbo on the CPU, exactly as
tiffslide does: right colours first, speed second.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from wsi_segment.address_space import ran_out
from wsi_segment.errors import SlideError
from wsi_segment.pipeline.inference.compute_stage import copy_into
from wsi_segment.pipeline.inference.engine_state import FirstError, Stopped
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.wsi.raw_tiles import JpegTiles
from wsi_segment.wsi.tile_reuse import WHITE, Key, PlannedTiles, tiles_of
from wsi_segment.wsi.tiling import ChunkSpec

Decoder = Literal["nvjpeg", "libjpeg"]

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec and warns on
# every call; the pinned version keeps them (docs/performance.md).
warnings.filterwarnings(
    "ignore",
    message=r"The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
)


def decode_streams(
    streams: Sequence[bytes], device: torch.device, decoder: Decoder
) -> torch.Tensor:
    """(N, H, W, 3) uint8 on `device` from N complete JPEG streams of one size: "nvjpeg" in
    one batched call on `device` (CUDA), "libjpeg" on the CPU then copied."""
    if not streams:
        raise ValueError("no JPEG streams to decode")
    data = [torch.from_numpy(np.frombuffer(s, dtype=np.uint8).copy()) for s in streams]
    if decoder == "nvjpeg" and device.type != "cuda":
        raise ValueError(f"nvjpeg decodes on a CUDA device, not {device}")
    on = device if decoder == "nvjpeg" else torch.device("cpu")
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=on)
    assert isinstance(images, list)  # a list in, a list out
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"JPEG streams of different sizes in one batch: {sorted(shapes)}")
    batch = torch.empty((len(images), *shapes.pop()[1:], 3), dtype=torch.uint8, device=on)
    for n, image in enumerate(images):  # (3, H, W) each; libjpeg's view (H, W, 3) buffers
        copy_into(batch[n], image.permute(1, 2, 0))
    return batch.to(device) if batch.device != device else batch


def own_copy(tile: torch.Tensor) -> torch.Tensor:
    """A decoded tile's own copy (a view would hold the whole decoded batch); on the CPU
    through numpy: it copies uint8 blocks far faster than torch."""
    return torch.from_numpy(tile.numpy().copy()) if tile.device.type == "cpu" else tile.clone()


@dataclass
class DeviceTiles:
    """Reads chunks' model tiles onto `device` with `decoder` (the run policy's); one per slide
    and device, used by one reader thread (no lock). As `wsi.tile_reuse` on the CPU, reads are
    planned (`start`) so each storage tile is decoded once and kept while a later read needs
    it, within a byte bound (past it, decoded again: pixels never depend on the bound)."""

    reader: TileReader
    tiles: JpegTiles
    device: torch.device
    decoder: Decoder
    tiles_decoded: int = 0  # storage tiles decoded (each decode of a tile counts)
    tiles_reused: int = 0  # storage tiles served from the kept ones instead
    # the storage tiles kept for their later reads (`kept_bytes`: what they hold now)
    planned: PlannedTiles[torch.Tensor] = field(
        default_factory=lambda: PlannedTiles([], 0, own_copy), repr=False
    )

    def start(self, specs: Sequence[ChunkSpec], max_bytes: int = 128 << 20) -> None:
        """Plan the reads of `specs`: each storage tile kept, within `max_bytes`, until its last."""
        boxes = [self.reader.read_box(s) for s in specs if s.tiles]  # level px = model px
        keys = (tiles_of(box, self.tiles.tile_size, self.tiles.level_size) for box in boxes)
        self.planned = PlannedTiles(keys, max_bytes, own_copy)

    def read_chunk(self, spec: ChunkSpec, errors: FirstError) -> torch.Tensor:
        """(len(spec.tiles), T, T, 3) uint8 on the device, in `spec.tiles` order, read now in
        this thread (Stopped if the engine has stopped); a codec's error is a SlideError."""
        if errors.stopped:
            raise Stopped
        try:
            grid = self.reader.grid
            t, s, m = grid.tile, grid.stride, grid.margin
            if not spec.tiles:
                return torch.empty((0, t, t, 3), dtype=torch.uint8, device=self.device)
            x0, y0, x1, y1 = self.reader.read_box(spec)  # level px: model px are level px
            box = self._paste(x0, y0, x1, y1)
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
        except torch.OutOfMemoryError:
            raise  # the device's, not the slide's
        except (RuntimeError, ValueError, OSError) as exc:  # a codec on a damaged tile
            if ran_out(exc):  # the host's memory, not the slide's
                raise
            raise SlideError(
                f"{self.reader.slide_path}: cannot decode the tiles of chunk ({spec.row}, "
                f"{spec.col}) on the {self.device.type} device: {exc}. The slide file is "
                "damaged there; re-scan or re-export it (--read-device cpu reads it with the "
                "slide library)"
            ) from exc

    def _paste(self, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
        """The level box (x0, y0)-(x1, y1) as (H, W, 3) uint8 on the device."""
        out = torch.empty((y1 - y0, x1 - x0, 3), dtype=torch.uint8, device=self.device)
        if self.device.type == "cpu":  # as copy_into: numpy fills faster than torch here
            out.numpy().fill(WHITE)
        else:
            out.fill_(WHITE)
        (tw, th), (lw, lh) = self.tiles.tile_size, self.tiles.level_size
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, lw), min(y1, lh)
        keys = tiles_of((x0, y0, x1, y1), (tw, th), (lw, lh))
        for (c, r), tile in zip(keys, self._take(keys), strict=True):
            # the part of the tile inside both the level and the box, in level px
            px0, py0 = max(c * tw, ix0), max(r * th, iy0)
            px1, py1 = min((c + 1) * tw, ix1), min((r + 1) * th, iy1)
            copy_into(
                out[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0],
                tile[py0 - r * th : py1 - r * th, px0 - c * tw : px1 - c * tw],
            )
        return out

    def _take(self, keys: list[Key]) -> list[torch.Tensor]:
        """The decoded tiles `keys` (tile_h, tile_w, 3) uint8 on the device, in order (edge
        tiles whole, padding included); one planned use of each is spent."""
        kept = self.planned.kept
        missing = [k for k in keys if k not in kept]
        streams = [self.tiles.stream(c, r) for c, r in missing]
        fresh = decode_streams(streams, self.device, self.decoder) if missing else ()
        decoded = dict(zip(missing, fresh, strict=True))
        out = [kept[k] if k in kept else decoded[k] for k in keys]
        self.tiles_decoded += len(missing)
        self.tiles_reused += len(keys) - len(missing)
        self.planned.spend(keys, decoded)
        return out

    def close(self) -> None:
        self.tiles.close()
