"""Every forward pass of the engine runs at the run's batch size, so a tile's bytes do not
depend on the batch it came in: the zarr store's files are the same whatever read source
filled the batches, in whatever order decoders delivered chunks, and however many tiles
the last batch held (issues 22 and 25)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (
    CMU_SLIDE,
    ENGINE,
    engine_run,
    run_tiles,
    torch_handle,
)
from tests.pipeline.inference.test_engine import job_over, tissue_of
from wsi_segment.models.bundle import load_model
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.pipeline.inference.engine import ReadSource
from wsi_segment.pipeline.inference.engine_state import EngineStats
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.read_sources import DecoderProcesses, ReaderThread
from wsi_segment.wsi.tissue import TissueMask


class BatchSizes:
    """The real model's executors, noting the number of tiles of every forward pass (an
    instrument)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def wrap(self, executor):
        sizes, lock = self.sizes, self._lock

        class Counted:
            def run(self, tiles):
                with lock:
                    sizes.append(len(tiles))
                return executor.run(tiles)

        return Counted()


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> SegmentationModel:
    return load_model(tiny_model_dir)


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every file of the zarr store (chunk keys and metadata) by its path in the store."""
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }


# Every fifth chunk of the plan (6 chunks of 2 x 2 tiles, 19 tissue tiles of its 100, in all
# four write units), over the whole slide: short last batches at 6 and 7; the forward passes
# were most of the time
EVERY = 5


@pytest.fixture(scope="module")
def tissue() -> TissueMask:
    """The CMU slide's tissue, detected once for the module's runs."""
    return tissue_of(CMU_SLIDE, detect=True)


def run(tmp: Path, model: SegmentationModel, tissue: TissueMask, name: str, batch: int):
    """One engine run over every fifth chunk of the CMU slide's plan in chunks of 2 x 2 tiles:
    (store files, forward pass sizes, stats, tissue tiles)."""
    counter = BatchSizes()
    handle = torch_handle(model, wrap=counter.wrap)
    job, specs = job_over(tmp / "p.zarr", handle, 2, CMU_SLIDE, tissue)
    specs = specs[::EVERY]
    stats = EngineStats()
    reads: ReadSource = (
        DecoderProcesses(2) if name.startswith("decoders") else ReaderThread(HostTiles(job.reader))
    )
    engine_run(job, specs, reads, replace(ENGINE, batch=batch), stats=stats)
    tiles = sum(len(s.tiles) for s in specs)
    return chunk_files(tmp / "p.zarr"), counter.sizes, stats, tiles


@pytest.mark.parametrize("batch", [6, 7])
def test_every_source_writes_the_same_bytes_in_forward_passes_of_the_batch_size(
    tmp_path, model, tissue, batch
):
    """The same compute threads for all (the bits depend on the torch thread count too)."""
    runs = {
        name: run(tmp_path / name, model, tissue, name, batch)
        for name in ("reader-thread", "decoders-2", "decoders-2-again")
    }
    files, _sizes, _stats, tiles = runs["reader-thread"]
    assert tiles % batch != 0  # the last batch of every run is short: padded
    assert sum(Path(f).name.isdigit() for f in files) >= 16  # chunk keys, probs and labels
    for name, (other, sizes, stats, _tiles) in runs.items():
        assert stats.tiles == tiles, name
        assert sizes == [batch] * -(-tiles // batch), name  # one short batch, padded
        assert max(stats.chunks_per_batch) >= 2, name  # batches mixed chunks
        assert other.keys() == files.keys(), name
        for key in files:
            assert other[key] == files[key], f"{name}: {key} differs"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_tiles_output_does_not_depend_on_the_other_tiles_of_its_batch(tiny_model_dir, precision):
    """What the engine's fixed-size forward passes (`ComputeStage`) rely on, for the models we ship (eval-mode ResNet classifier
    and DeepLabV3+): at one batch size, a tile gives the same bits at every position of the
    batch and beside any other tiles."""
    model = load_model(tiny_model_dir)
    size = int(model.meta.tile_size)
    gen = torch.Generator().manual_seed(3)
    tile = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=gen)
    outs = []
    for position in range(3):
        batch = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=gen)
        batch[position] = tile[0]
        out = run_tiles(model, batch, 8, 48, 4, gate=True, precision=precision)
        outs.append((out.probs[position], out.labels[position], out.cls_probs[position]))
    for probs, labels, cls_probs in outs[1:]:
        np.testing.assert_array_equal(probs, outs[0][0])
        np.testing.assert_array_equal(labels, outs[0][1])
        np.testing.assert_array_equal(cls_probs, outs[0][2])  # bitwise, before the gate
