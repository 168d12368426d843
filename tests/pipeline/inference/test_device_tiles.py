"""Model tiles assembled on the device from decoded storage tiles are the tiles the CPU
decoders read (`TileReader.read_tiles`), edges and partial tissue included. The device
reads are opened as a run opens them: the slide's read facts (`read_sources.slide_reads`),
then `DeviceTiles` on the tiles it serves."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CMU_SLIDE, DATA_DIR
from wsi_segment.pipeline.inference.device_tiles import Decoder, DeviceTiles
from wsi_segment.pipeline.inference.engine_state import FirstError
from wsi_segment.pipeline.inference.read_sources import slide_reads
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.read_policy import ReadFacts
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid, plan_chunks

CPU = torch.device("cpu")
OME_TIFF = DATA_DIR / "OS-1-detail.ome.tif"


def _reader(
    path: Path, backend: str, model_mpp: float, grid: TileGrid, chunk_tiles: int = 2
) -> tuple[TileReader, list[ChunkSpec]]:
    slide = open_slide(str(path), backend=backend, mpp=0.5)
    plan = plan_chunks(slide, 0.5, model_mpp, grid, chunk_tiles, None)
    reader = TileReader(
        slide_path=str(path),
        backend=backend,
        mpp_override=0.5,
        level0_per_model=plan.level0_per_model,
        read_level=plan.read_level,
        grid=grid,
    )
    return reader, list(plan.specs)


def device_reads(
    reader: TileReader, device: torch.device, decoder: Decoder
) -> tuple[ReadFacts, DeviceTiles | None]:
    """The slide's read facts as `prepare` and a Dask band take them, and the device reads a
    run then builds on the tiles served (`read_sources.plan_source`, locally and in a band);
    None where the device path cannot serve the slide (the facts say why)."""
    key = (reader.read_level, reader.level0_per_model)
    facts, tiles = slide_reads(reader.slide_path, reader.slide(), key)
    return facts, None if tiles is None else DeviceTiles(reader, tiles, device, decoder)


def _cpu_tiles(reader: TileReader, spec: ChunkSpec) -> np.ndarray:
    return reader.read_tiles(spec)


@pytest.mark.parametrize(
    ("path", "backend", "grid"),
    [
        (CMU_SLIDE, "openslide", TileGrid(tile=224, overlap=32, downsample=4)),
        (CMU_SLIDE, "tiffslide", TileGrid(tile=224, overlap=32, downsample=4)),
        (OME_TIFF, "tiffslide", TileGrid(tile=160, overlap=16, downsample=4)),
    ],
    ids=["cmu-openslide", "cmu-tiffslide", "ome-420"],
)
def test_every_chunk_gets_the_cpu_decoders_tiles(path, backend, grid):
    reader, specs = _reader(path, backend, 0.5, grid)
    facts, device_tiles = device_reads(reader, CPU, "libjpeg")
    assert device_tiles is not None, facts
    assert device_tiles.decoder == "libjpeg"
    # chunks at every border read past the slide (white halo); CMU's 2967 px rows end
    # inside a storage tile, so its padded edge tiles are cropped
    assert len(specs) >= 4
    for spec in specs:
        got = device_tiles.read_chunk(spec, FirstError())
        assert got.device == CPU and got.dtype == torch.uint8
        np.testing.assert_array_equal(got.numpy(), _cpu_tiles(reader, spec))
    device_tiles.close()
    reader.close_local()


def test_partial_tissue_chunk_reads_only_its_tiles():
    grid = TileGrid(tile=224, overlap=32, downsample=4)
    reader, specs = _reader(CMU_SLIDE, "tiffslide", 0.5, grid, chunk_tiles=4)
    spec = dataclasses.replace(specs[0], tiles=((1, 2), (2, 1), (3, 3)))
    _, device_tiles = device_reads(reader, CPU, "libjpeg")
    assert device_tiles is not None
    got = device_tiles.read_chunk(spec, FirstError())
    assert got.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(got.numpy(), _cpu_tiles(reader, spec))
    empty = device_tiles.read_chunk(dataclasses.replace(spec, tiles=()), FirstError())
    assert empty.shape == (0, 224, 224, 3)


def test_resampled_or_unservable_slides_fall_back_with_a_reason():
    grid = TileGrid(tile=224, overlap=32, downsample=4)
    reader, _ = _reader(CMU_SLIDE, "tiffslide", 1.0, grid)  # 2 level-0 px per model px
    facts, found = device_reads(reader, CPU, "libjpeg")
    assert found is None
    assert facts.unsupported == (
        "model pixels are not level 0's pixels (2 level-0 px per model px, level downsample 1):"
        " resampling runs on the CPU"
    )
    boxes, _ = _reader(DATA_DIR / "boxes.tiff", "tiffslide", 0.5, TileGrid(32, 8, 4))
    assert device_reads(boxes, CPU, "libjpeg") == (
        ReadFacts(unsupported="ADOBE_DEFLATE compression, not JPEG"),
        None,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiles_assembled_on_cuda_match_the_cpu_decoders():
    """Aperio tiles are RGB-coded, so libjpeg decodes them before the copy: exact."""
    grid = TileGrid(tile=224, overlap=32, downsample=4)
    reader, specs = _reader(CMU_SLIDE, "tiffslide", 0.5, grid)
    _, device_tiles = device_reads(reader, torch.device("cuda"), "libjpeg")
    assert device_tiles is not None
    for spec in specs:
        got = device_tiles.read_chunk(spec, FirstError())
        assert got.device.type == "cuda"
        np.testing.assert_array_equal(got.cpu().numpy(), _cpu_tiles(reader, spec))
