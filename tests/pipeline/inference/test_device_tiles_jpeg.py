"""Batched JPEG decoding of storage tiles: on the CPU exactly tiffslide's pixels; on a GPU
(nvJPEG) within what the JPEG standard allows two decoders to differ."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CMU_SLIDE, DATA_DIR
from wsi_segment.pipeline.inference.device_tiles import Decoder, decode_streams
from wsi_segment.wsi.raw_tiles import JpegTiles, open_jpeg_tiles
from wsi_segment.wsi.slide import open_slide

SLIDES = [CMU_SLIDE, DATA_DIR / "small.svs", DATA_DIR / "OS-1-detail.ome.tif"]
CPU = torch.device("cpu")
CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tiles(path: Path) -> JpegTiles:
    with open_slide(str(path), "tiffslide", mpp=0.5) as slide:
        tiles = open_jpeg_tiles(str(path), 0, slide.level_dimensions[0])
    assert isinstance(tiles, JpegTiles), tiles
    return tiles


def decode_tiles(
    tiles: JpegTiles, keys: list[tuple[int, int]], device: torch.device, decoder: Decoder
) -> torch.Tensor:
    """The storage tiles (col, row) decoded in one batch, as the device read path does."""
    return decode_streams([tiles.stream(c, r) for c, r in keys], device, decoder)


def _all_keys(tiles: JpegTiles) -> list[tuple[int, int]]:
    cols, rows = tiles.grid
    return [(c, r) for r in range(rows) for c in range(cols)]


@pytest.mark.parametrize("path", SLIDES, ids=lambda p: p.name)
def test_cpu_batch_is_tiffslides_pixels_exactly(path):
    """Both are libjpeg-turbo with default settings (islow IDCT, fancy upsampling) on the
    same coefficients: identical bytes, on any CPU (libjpeg-turbo's SIMD paths are exact)."""
    tiles = _tiles(path)
    keys = _all_keys(tiles)
    batch = decode_tiles(tiles, keys, CPU, "libjpeg")
    (tw, th), (lw, lh) = tiles.tile_size, tiles.level_size
    assert batch.shape == (len(keys), th, tw, 3) and batch.dtype == torch.uint8
    with open_slide(str(path), "tiffslide", mpp=0.5) as slide:
        for n, (c, r) in enumerate(keys):
            x0, y0 = c * tw, r * th
            w, h = min(tw, lw - x0), min(th, lh - y0)
            ref = slide.read_region((x0, y0), 0, (w, h))
            np.testing.assert_array_equal(batch[n, :h, :w].numpy(), ref)


def test_only_streams_whose_header_states_ycbcr_are_safe_for_nvjpeg():
    """The fact the run policy gives nvJPEG only YCbCr tiles by (tests/pipeline/
    test_run_policy.py): Aperio's RGB-coded tiles keep their colours only through libjpeg."""
    aperio, jfif = _tiles(CMU_SLIDE), _tiles(DATA_DIR / "OS-1-detail.ome.tif")
    assert not aperio.colour_safe_anywhere
    assert jfif.colour_safe_anywhere


def test_bad_batches_are_refused():
    tiles = _tiles(CMU_SLIDE)
    with pytest.raises(ValueError, match="no JPEG streams"):
        decode_streams([], CPU, "libjpeg")
    with pytest.raises(ValueError, match="CUDA device"):
        decode_streams([tiles.stream(0, 0)], CPU, "nvjpeg")
    small = _tiles(DATA_DIR / "small.svs")
    with pytest.raises(ValueError, match="different sizes"):
        decode_streams([tiles.stream(0, 0), small.stream(0, 0)], CPU, "libjpeg")


def _jfif_444(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, subsampling=0)
    return out.getvalue()


@needs_cuda
def test_gpu_decode_of_444_ycbcr_is_within_the_standards_idct_tolerance():
    """ISO/IEC 10918-2 lets a decoder's reconstructed Y, Cb, Cr samples differ from the
    reference by at most 1. Through the JFIF conversion (R = Y + 1.402 Cr', G = Y - 0.344
    Cb' - 0.714 Cr', B = Y + 1.772 Cb') that is at most 2.40, 2.06, 2.77 per channel, plus
    each decoder rounding its own conversion (0.5 each): every channel within 3."""
    with open_slide(str(CMU_SLIDE), "tiffslide") as slide:
        region = slide.read_region((500, 700), 0, (512, 512))
    streams = [_jfif_444(region[y : y + 256, x : x + 256]) for y in (0, 256) for x in (0, 256)]
    cpu = decode_streams(streams, CPU, "libjpeg")
    gpu = decode_streams(streams, CUDA, "nvjpeg")
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert int(diff.max()) <= 3


@needs_cuda
def test_gpu_decode_of_420_ycbcr_slide_tiles_agrees_in_luma():
    """4:2:0 chroma upsampling is left to the decoder by the standard (libjpeg-turbo
    interpolates, others may replicate), so chroma may differ at colour edges. Luma does
    not depend on it: Y recomputed from the RGB output differs by at most 1 (IDCT) + 0.5 +
    0.5 (each decoder's rounding of R, G, B) = 2 where no channel is clipped at 0 or 255."""
    tiles = _tiles(DATA_DIR / "OS-1-detail.ome.tif")
    keys = _all_keys(tiles)
    cpu = decode_tiles(tiles, keys, CPU, "libjpeg").double()
    gpu = decode_tiles(tiles, keys, CUDA, "nvjpeg").cpu().double()
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    unclipped = ((cpu > 0) & (cpu < 255) & (gpu > 0) & (gpu < 255)).all(dim=-1)
    luma_diff = ((gpu - cpu) @ weights).abs()[unclipped]
    assert unclipped.float().mean() > 0.5 and float(luma_diff.max()) <= 2.0


@needs_cuda
def test_rgb_coded_tiles_reach_the_gpu_decoded_by_libjpeg():
    tiles = _tiles(CMU_SLIDE)
    keys = _all_keys(tiles)[:8]
    on_gpu = decode_tiles(tiles, keys, CUDA, "libjpeg")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), decode_tiles(tiles, keys, CPU, "libjpeg"))
