"""The engine's decoders start in `prepare`, while the model loads, and are closed
on every path: adopted by the engine, skipped by an up-to-date rerun, or a failure."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, corrupt_middle_tile
from tests.engine_leaks import shm_entries
from tests.wsi import qupath_exports as qp
from wsi_segment.errors import ModelError, SlideError
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import PreparedSlide
from wsi_segment.pipeline.segment import Stages, finish, infer, prepare, run_stages


def params(
    model_dir: Path, tissue: str = "auto", decoders: int = 2, roi: Path | None = None
) -> SegmentParams:
    return SegmentParams(
        model_dir=model_dir,
        device="cpu",
        precision="fp32",
        chunk_tiles=2,
        decoders=decoders,
        tissue=tissue,
        roi=roi,
    )


def region(path: Path) -> Path:
    """A --roi file of one 600 x 500 px rectangle of CMU tissue around the slide's middle
    JPEG tile (the one `corrupt_middle_tile` damages): a run of some 30 tiles in several
    chunks for the decoders to share, where the whole slide's forward passes were most of
    this module's time."""
    return qp.export(path, [qp.annotation(qp.rect(1000, 1300, 1600, 1800), "middle")])


def run_recording(
    slide: Path,
    out: Path,
    p: SegmentParams,
    pools: list[DecodePool | None],
    finished_meanwhile: Path | None = None,
):
    """`segment_slide`'s stages with decoders started in prepare; `pools` gets each. With
    `finished_meanwhile`, that finished output is copied into place once prepare returns,
    as if another run had finished the slide while this one prepared it."""

    def prepare_early(path: str, root: str | Path, p: SegmentParams) -> PreparedSlide:
        prep = prepare(path, root, p, early=True)
        pools.append(prep.decode_pool)
        if finished_meanwhile is not None:
            shutil.copytree(finished_meanwhile, prep.out_dir)
        return prep

    return run_stages(slide, out, p, Stages(prepare_early, infer, finish))


def assert_closed(pools: list[DecodePool | None], before: set[str]) -> None:
    assert pools and all(pool is not None for pool in pools)  # each run started one
    assert all(pool.ring is None and pool.procs == [] for pool in pools if pool)
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before


def test_early_decoders_are_adopted_and_an_up_to_date_rerun_closes_them(tmp_path, tiny_model_dir):
    before = shm_entries()
    pools: list[DecodePool | None] = []
    p = params(tiny_model_dir, roi=region(tmp_path / "middle.geojson"))
    first = run_recording(CMU_SLIDE, tmp_path / "a", p, pools)
    assert first.status == "done"
    again = run_recording(CMU_SLIDE, tmp_path / "a", p, pools)
    assert again.status == "up-to-date"
    assert len(pools) == 1  # decided before prepare: no decoder started
    # finished by another run while this one prepared: its early decoders are closed
    raced = run_recording(CMU_SLIDE, tmp_path / "b", p, pools, first.out_dir)
    assert raced.status == "up-to-date"
    assert len(pools) == 2
    assert_closed(pools, before)


def test_a_failed_read_closes_the_early_decoders(tmp_path, tiny_model_dir):
    damaged = tmp_path / "cmu_damaged.svs"
    corrupt_middle_tile(CMU_SLIDE, damaged)
    before = shm_entries()
    pools: list[DecodePool | None] = []
    # the whole slide (tissue detection reads level 0 of this one-level slide) in the region
    p = params(tiny_model_dir, "all", roi=region(tmp_path / "middle.geojson"))
    with pytest.raises(SlideError, match=r"cmu_damaged\.svs"):
        run_recording(damaged, tmp_path / "out", p, pools)
    assert_closed(pools, before)
    assert not (tmp_path / "out" / "cmu_damaged").exists()


def test_a_model_that_fails_to_load_closes_the_early_decoders(tmp_path, tiny_model_dir):
    """model.json plans the chunks (decoders start), then the weights fail to load."""
    broken = tmp_path / "broken_model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = shm_entries()
    with pytest.raises(ModelError):
        prepare(CMU_SLIDE, tmp_path / "out", params(broken), early=True)
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before


def test_decoders_spawned_before_tissue_detection_are_closed_when_it_fails(
    tmp_path, tiny_model_dir
):
    """With a core to spare (one decoder here), the decoders spawn before tissue is
    detected (they import meanwhile); detection reading a damaged tile fails, and they are
    stopped with nothing left behind."""
    damaged = tmp_path / "cmu_damaged.svs"
    corrupt_middle_tile(CMU_SLIDE, damaged)
    before = shm_entries()
    with pytest.raises(SlideError, match=r"cmu_damaged\.svs"):
        prepare(damaged, tmp_path / "out", params(tiny_model_dir, decoders=1), early=True)
    assert multiprocessing.active_children() == []
    assert shm_entries() <= before


def test_a_slide_without_tissue_keeps_no_decoders(tmp_path, tiny_model_dir):
    import numpy as np
    import tifffile

    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.full((512, 512, 3), 240, np.uint8), tile=(256, 256),
                     photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # fmt: skip
    prep = prepare(blank, tmp_path / "out", params(tiny_model_dir), early=True)
    try:
        assert prep.specs == [] or all(not s.tiles for s in prep.specs)
        assert prep.decode_pool is None
        assert multiprocessing.active_children() == []
    finally:
        prep.close_prefetch()
