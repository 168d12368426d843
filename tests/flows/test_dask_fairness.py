"""Slides of a batch share one Dask cluster fairly (`band_runner.BAND_TILES`, band
priorities): a quick slide started while a slow one has many bands queued finishes after
at most a band or two of the slow one, not after all of it, and no band is longer than
`BAND_TILES` tiles, so that wait does not grow with the slow slide."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, torch_handle, torch_spec
from tests.flows.conftest import write_synthetic_slide
from tests.pipeline.inference.test_band_runner import band_job_over, band_options, cluster_plan
from tests.pipeline.inference.test_engine import four_units_tissue, make_job
from wsi_segment.models.bundle import load_bundle
from wsi_segment.pipeline.inference.band_runner import (
    BAND_TILES,
    GPU_BAND_TILES,
    band_count,
    run_bands,
)
from wsi_segment.pipeline.inference.model_handle import ModelHandle
from wsi_segment.pipeline.inference.slide_job import SlideJob
from wsi_segment.wsi.tiling import ChunkSpec, contiguous_runs

SLOW_BANDS = 8


class BandClock:
    """A progress bar that notes when each band finished."""

    def __init__(self) -> None:
        self.finished: list[float] = []

    def note(self, text: str) -> None:
        pass

    def start(self, total: int, unit: str = "tile", desc: str = "") -> None:
        pass

    def advance(self, n: int) -> None:
        self.finished.append(time.monotonic())

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def one_slot() -> Iterator:
    """Our local cluster with one worker process running one band at a time: every band
    of every slide waits for the same slot."""
    from wsi_segment.flows.dask_cluster import dask_client

    with dask_client(workers=1, threads=1) as client:
        client.wait_for_workers(1, timeout=120)
        yield client


def many_bands_job(tmp: Path, model_dir: Path) -> tuple[SlideJob, list[ChunkSpec]]:
    """A synthetic slide at the model's own 2 um/px, 768 x 1536 px: 2 x 4 zarr chunks (write
    units) of the tiny model's output, all of it read (not only its tissue), so it cuts into
    `SLOW_BANDS` bands of 64 tiles."""
    slide = write_synthetic_slide(tmp / "slow.svs", (768, 1536), seed=3, mpp=2.0)
    model = torch_handle(load_bundle(model_dir))
    job, specs = make_job(tmp / "slow.zarr", model, 2, slide, detect=False)
    handle = ModelHandle(str(model_dir), "cpu", torch_spec("fp32"))
    return dataclasses.replace(job, model=handle), specs


@pytest.mark.slow  # a dozen bands of two slides on one slot (~50 s); the band cap behind it is tested below
def test_a_quick_slide_does_not_wait_for_a_slow_one_on_a_shared_cluster(
    one_slot, tmp_path: Path, tiny_model_dir: Path
) -> None:
    slow_job, slow_specs = many_bands_job(tmp_path, tiny_model_dir)
    assert len(contiguous_runs(slow_specs, SLOW_BANDS)) == SLOW_BANDS
    # the CMU slide's tissue where four write units meet: 46 tiles, three bands on one slot
    quick_job, quick_specs = band_job_over(
        tmp_path / "quick.zarr", tiny_model_dir, CMU_SLIDE, four_units_tissue()
    )
    assert len(contiguous_runs(quick_specs, 3)) == 3
    slow_clock = BandClock()
    slow_done = threading.Event()

    def slow_slide() -> None:
        try:
            run_bands(
                slow_job,
                slow_specs,
                one_slot,
                cluster_plan(band_options()),
                slow_clock,
                "slow",
                SLOW_BANDS,
            )
        finally:
            slow_done.set()

    thread = threading.Thread(target=slow_slide, name="slow-slide")
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not slow_clock.finished and time.monotonic() < deadline:
            time.sleep(0.05)  # the slow slide's bands are all queued, its first has run
        assert slow_clock.finished, "the slow slide's first band never finished"
        quick_clock = BandClock()
        run_bands(
            quick_job, quick_specs, one_slot, cluster_plan(band_options()), quick_clock, "quick"
        )
        quick_end = time.monotonic()
        # its three bands (as many as a slide gets per slot), queued on the scheduler behind
        # the slow slide's: meanwhile the slot ran at most the slow band that held it and the
        # one the worker already held, never the slow slide's remaining half dozen (before
        # band priorities: 7 of 8, the quick slide ended just after the slow one)
        slow_meanwhile = [t for t in slow_clock.finished[1:] if t <= quick_end]
        assert len(slow_meanwhile) <= 2, (len(slow_meanwhile), len(slow_clock.finished))
        assert not slow_done.is_set()
    finally:
        thread.join(timeout=600)
    assert len(slow_clock.finished) == SLOW_BANDS  # and the slow slide still finished


def test_bands_are_capped_in_tiles_so_a_slot_frees_soon_whatever_the_slide_size() -> None:
    tiles = tuple((i, j) for i in range(8) for j in range(8))
    specs = [
        ChunkSpec(k, 0, (0, 48 * k, 384, 48 * k + 48), tiles, (0, k, 96, k + 1))
        for k in range(1000)
    ]
    assert band_count(specs, slots=2) == -(-64_000 // BAND_TILES) == 32
    assert band_count(specs[:10], slots=2) == 6  # small slides: three per slot, as before
    runs = contiguous_runs(specs, band_count(specs, slots=2))
    assert max(sum(len(specs[i].tiles) for i in r) for r in runs) <= BAND_TILES
    # one band at a time per GPU: bands 8x as long, as many as the tiles need
    assert band_count(specs, slots=2, gpu=True) == 6  # 4 of GPU_BAND_TILES: three per slot
    assert band_count(specs * 4, slots=2, gpu=True) == -(-256_000 // GPU_BAND_TILES) == 16
