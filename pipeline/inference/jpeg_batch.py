"""Decode a batch of storage tiles' JPEG streams into one uint8 tensor on the model's device.

`torchvision.io.decode_jpeg` decodes a list of streams with nvJPEG on a CUDA device (one
batched call) and with libjpeg-turbo on the CPU; no other dependency. The CPU decode gives
exactly tiffslide's pixels (both are libjpeg-turbo with its defaults, and the streams carry
their colour coding in the header: `wsi.raw_tiles`).

Colour: nvJPEG converts every 3-component stream as YCbCr and its handling of the APP14
marker that says "RGB, no transform" is not documented, so only streams whose header states
YCbCr (`JpegTiles.colour_safe_anywhere`) are decoded on the GPU (the run policy's decision,
`pipeline.run_policy`). RGB-coded streams (Aperio SVS) are decoded on the CPU and copied to
the device: right colours first, speed second.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from wsi_segment.wsi.raw_tiles import JpegTiles

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
    """(N, H, W, 3) uint8 on `device` from N complete JPEG streams of one size.

    `decoder` "nvjpeg" decodes on `device` (CUDA) in one batched call; "libjpeg" decodes on
    the CPU and copies the batch to `device`.
    """
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


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[...] = src. On the CPU through numpy: torch's parallel copy of small uint8 blocks
    costs several times more, and far more on a loaded machine (its threads wait on each
    other)."""
    if dst.device.type == "cpu" and src.device.type == "cpu":
        dst.numpy()[...] = src.numpy()
    else:
        dst.copy_(src)


def decode_tiles(
    tiles: JpegTiles, keys: Sequence[tuple[int, int]], device: torch.device, decoder: Decoder
) -> torch.Tensor:
    """Storage tiles (col, row) of one level, decoded by `decoder` (the run policy's: nvJPEG
    only for tiles whose header states YCbCr, module doc) into (N, tile_h, tile_w, 3) uint8
    on `device` (edge tiles whole, padding included: the caller crops to the level)."""
    streams = [tiles.stream(c, r) for c, r in keys]
    return decode_streams(streams, device, decoder)
