"""The device read path (one reader thread reading onto the model's device, no decoder
processes) writes exactly what the decoder-process engine writes, decodes each storage tile
once per slide, and stops cleanly on a damaged tile. Run on the CPU device: the CPU decode is
byte-identical to tiffslide's and openslide's (libjpeg-turbo on both sides)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (
    CMU_SLIDE,
    DATA_DIR,
    corrupt_middle_tile,
    engine_run,
    torch_handle,
)
from tests.engine_jobs import planned_job
from tests.engine_leaks import shm_entries
from tests.pipeline.inference.test_device_tiles import device_reads as open_reads
from tests.pipeline.inference.test_engine import TileByTile, assert_same_outcomes, stored
from wsi_segment.errors import SlideError
from wsi_segment.models.bundle import load_bundle
from wsi_segment.pipeline.inference.device_tiles import Decoder, DeviceTiles
from wsi_segment.pipeline.inference.engine_state import EngineStats, FirstError
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.read_sources import DecoderProcesses, ReaderThread
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid, plan_chunks
from wsi_segment.wsi.tissue import detect_tissue, whole_slide

OME_TIFF = DATA_DIR / "OS-1-detail.ome.tif"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> ModelHandle:
    return torch_handle(load_bundle(tiny_model_dir), wrap=TileByTile)


def level_job(
    tmp: Path, model, slide_path: Path, chunk_tiles: int = 2, detect: bool = True
) -> tuple[SlideJob, list[ChunkSpec]]:
    """A job whose model pixels are the slide's level-0 pixels (the slide's mpp taken as the
    model's), the only plan the device path serves."""
    meta = model.get().model.meta
    slide = open_slide(slide_path, mpp=meta.mpp)
    grid = TileGrid(tile=meta.tile_size, overlap=16, downsample=4)
    tissue = detect_tissue(slide) if detect else whole_slide(slide)
    plan = plan_chunks(slide, meta.mpp, meta.mpp, grid, chunk_tiles, tissue)
    assert plan.level0_per_model == 1.0
    job = planned_job(
        slide_path, slide.backend, plan, grid, model, meta.classes,
        store=tmp, tissue=tissue, colors=meta.colors, model_mpp=meta.mpp, mpp_override=meta.mpp,
    )  # fmt: skip
    slide.close()
    return job, plan.specs


def window(specs: list[ChunkSpec], rows: set[int], cols: set[int]) -> list[ChunkSpec]:
    """The chunks in these chunk rows and columns (a run over part of the slide keeps tests
    short; each chunk's result does not depend on the others)."""
    return [s for s in specs if s.row in rows and s.col in cols]


def device_reads(
    job: SlideJob, device: torch.device = CPU, decoder: Decoder = "libjpeg"
) -> DeviceTiles:
    facts, reads = open_reads(job.reader, device, decoder)
    assert reads is not None, facts
    return reads


def open_fds_to(path: Path) -> int:
    fds = Path("/proc/self/fd")
    target = os.path.realpath(path)
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.path.realpath(os.readlink(fd)) == target
        except OSError:
            continue
    return count


# chunks of 2 x 2 tiles of 64 px (stride 48): 96 model px = level px a side. The windows
# straddle storage tile borders (OS-1: 512 px, CMU-1: 240 px) and include the slide's last
# row and column of chunks (read past the slide: white halo, padded edge tiles cropped).
WINDOWS = {OME_TIFF: ({4, 5, 6, 11}, {4, 5, 11}), CMU_SLIDE: ({1, 2, 3, 30}, {2, 3, 23})}


@pytest.mark.parametrize(
    ("slide_path", "decoder"),
    [(OME_TIFF, "libjpeg"), (CMU_SLIDE, "libjpeg")],
    ids=["ome-tiff-ycbcr", "cmu-aperio-rgb"],
)
def test_device_reads_write_what_the_decoder_processes_write(tmp_path, tiny, slide_path, decoder):
    def planned(name: str) -> tuple[SlideJob, list[ChunkSpec]]:
        job, specs = level_job(tmp_path / name, tiny, slide_path, detect=False)
        specs = window(specs, *WINDOWS[slide_path])
        specs[1] = dataclasses.replace(specs[1], tiles=specs[1].tiles[1:])  # partial tissue
        return job, specs

    job, specs = planned("a.zarr")
    assert len(specs) == 12 and sum(len(s.tiles) for s in specs) < 48
    expected = engine_run(job, specs, DecoderProcesses(1))
    expected_bytes = stored(job)

    job, specs = planned("b.zarr")
    reads = device_reads(job)
    assert reads.decoder == decoder
    threads_before = threading.active_count()
    stats = EngineStats()
    outcomes = engine_run(job, specs, ReaderThread(reads), stats=stats)
    assert stats.decoders == 0 and multiprocessing.active_children() == []
    assert stats.tiles == sum(len(s.tiles) for s in specs)
    assert max(stats.chunks_per_batch) >= 2  # a batch held tiles of several chunks
    np.testing.assert_array_equal(stored(job), expected_bytes)
    assert_same_outcomes(outcomes, expected)
    assert threading.active_count() == threads_before  # reader, compute, writer joined
    assert reads.tiles._fd is None  # the engine closed the reads it adopted


def test_each_storage_tile_is_decoded_once_per_slide(tmp_path, tiny):
    """CMU-1's 240 px storage tiles under chunks of 2 x 2 tiles of 64 px: most storage tiles
    lie under several chunks' read boxes, and each is decoded once."""
    job, specs = level_job(tmp_path / "p.zarr", tiny, CMU_SLIDE, detect=False)
    reads = device_reads(job)
    reads.start(specs)
    cache_keys: set[tuple[int, int]] = set()
    touched = 0
    (tw, th), (lw, lh) = reads.tiles.tile_size, reads.tiles.level_size
    for spec in specs:
        x0, y0, x1, y1 = job.reader.read_box(spec)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, lw), min(y1, lh)
        keys = {
            (c, r)
            for r in range(y0 // th, (y1 - 1) // th + 1)
            for c in range(x0 // tw, (x1 - 1) // tw + 1)
        }
        cache_keys |= keys
        touched += len(keys)
    assert len(cache_keys) == 10 * 13  # the whole 2220 x 2967 px level
    for spec in specs:
        reads.read_chunk(spec, FirstError())
    assert reads.tiles_decoded == len(cache_keys)
    assert reads.tiles_reused == touched - len(cache_keys) > len(cache_keys)
    assert reads.planned.kept_bytes == 0  # every kept tile dropped after its last use


def test_a_cache_too_small_to_keep_anything_reads_the_same_pixels(tmp_path, tiny):
    job, specs = level_job(tmp_path / "p.zarr", tiny, OME_TIFF)
    specs = window(specs, *WINDOWS[OME_TIFF])
    reads = device_reads(job)
    reads.start(specs, max_bytes=0)
    ref = device_reads(job)
    for spec in specs:
        np.testing.assert_array_equal(
            reads.read_chunk(spec, FirstError()).numpy(), ref.read_chunk(spec, FirstError()).numpy()
        )
    assert reads.tiles_reused == 0


def test_a_damaged_tile_stops_the_run_and_nothing_writes_after(tmp_path, tiny):
    damaged = tmp_path / "cmu_damaged.svs"
    x, y = corrupt_middle_tile(CMU_SLIDE, damaged)
    job, specs = level_job(tmp_path / "p.zarr", tiny, damaged, detect=False)
    # a chunk written first, then the chunks over the damaged tile (96 px chunks)
    specs = [specs[0], *window(specs, {y // 96 + 1}, {x // 96 + 1, x // 96 + 2})]
    reads = device_reads(job)
    before = shm_entries()
    threads_before = threading.active_count()
    with pytest.raises(SlideError) as caught:
        engine_run(job, specs, ReaderThread(reads))
    text = str(caught.value)
    assert "cmu_damaged.svs" in text and "re-export" in text  # the file and the fix
    written = sorted(p.name for p in Path(job.zarr_path).iterdir() if not p.name.startswith("."))
    time.sleep(0.3)  # nothing may still be writing once run_engine has raised
    assert (
        sorted(p.name for p in Path(job.zarr_path).iterdir() if not p.name.startswith("."))
        == written
    )
    assert threading.active_count() == threads_before
    assert multiprocessing.active_children() == [] and shm_entries() <= before
    assert open_fds_to(damaged) == 0  # the reads' file handle is closed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_reads_on_cuda_write_what_the_decoder_processes_write(tmp_path, tiny_model_dir):
    """CMU-1's RGB-coded tiles are decoded by libjpeg and copied to the device: the same
    tiles as the decoder processes', so a model on CUDA writes the same bytes from both
    (the side stream and its ready events ordered before each forward pass)."""
    wrapped = torch_handle(load_bundle(tiny_model_dir), device="cuda", wrap=TileByTile)
    job, specs = level_job(tmp_path / "a.zarr", wrapped, CMU_SLIDE, detect=False)
    specs = window(specs, *WINDOWS[CMU_SLIDE])
    expected = engine_run(job, specs, DecoderProcesses(1))
    expected_bytes = stored(job)
    job, specs = level_job(tmp_path / "b.zarr", wrapped, CMU_SLIDE, detect=False)
    specs = window(specs, *WINDOWS[CMU_SLIDE])
    reads = device_reads(job, torch.device("cuda"), "libjpeg")  # RGB-coded tiles
    assert reads.decoder == "libjpeg"
    assert_same_outcomes(engine_run(job, specs, ReaderThread(reads)), expected)
    np.testing.assert_array_equal(stored(job), expected_bytes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["tile-by-tile", "cuda-graph"])
def test_nvjpeg_reads_feed_the_engine(tmp_path, tiny_model_dir, cuda_graphs):
    """OS-1's YCbCr tiles go to nvJPEG (pixels within the JPEG decoder tolerance of
    libjpeg's: tests/pipeline/inference/test_device_tiles_jpeg.py); every tile runs, tile by
    tile and as replays of a CUDA graph captured while nvJPEG decodes on the side stream."""
    wrap = None if cuda_graphs else TileByTile
    model = torch_handle(
        load_bundle(tiny_model_dir), device="cuda", wrap=wrap, cuda_graphs=cuda_graphs
    )
    job, specs = level_job(tmp_path / "p.zarr", model, OME_TIFF)
    reads = device_reads(job, torch.device("cuda"), "nvjpeg")  # YCbCr tiles
    assert reads.decoder == "nvjpeg"
    stats = EngineStats()
    outcomes = engine_run(job, specs, ReaderThread(reads), stats=stats)
    assert stats.tiles == sum(o.tiles_run for o in outcomes) == sum(len(s.tiles) for s in specs)
    assert reads.tiles_decoded == 9  # 3 x 3 storage tiles
