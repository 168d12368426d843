"""The host reads' thread hands the engine each chunk in plan order, its read's error at the
damaged chunk (the chunks before it intact), and ends when closed, even while it waits for
the engine to take what it read ahead."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE, corrupt_middle_tile
from wsi_segment.errors import SlideError
from wsi_segment.pipeline.inference.engine_state import FirstError, Stopped
from wsi_segment.pipeline.inference.host_tiles import HostTiles
from wsi_segment.pipeline.inference.slide_plan import plan_reader
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import ChunkSpec, TileGrid, plan_chunks


def reader_and_chunks(slide_path: Path) -> tuple[TileReader, list[ChunkSpec]]:
    """Level-0 reads of the whole slide in 2 x 2 chunks of 224 px tiles."""
    slide = open_slide(slide_path, backend="tiffslide")
    grid = TileGrid(tile=224, overlap=32, downsample=4)
    plan = plan_chunks(slide, 0.499, 0.499, grid, 2, None)
    reader = plan_reader(str(slide_path), slide, SegmentParams(), plan, grid, None)
    return reader, [s for s in plan.specs if s.tiles]


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tile-prefetch"]


def test_a_damaged_chunk_raises_its_read_error_after_the_intact_ones(tmp_path):
    damaged = tmp_path / "damaged.svs"
    corrupt_middle_tile(CMU_SLIDE, damaged)
    reader, specs = reader_and_chunks(damaged)
    first_bad = None
    for index, spec in enumerate(specs):  # the first chunk a direct read fails on
        try:
            reader.read_tiles(spec)
        except SlideError:
            first_bad = index
            break
    assert first_bad is not None and first_bad > 0
    reads = HostTiles(reader)
    reads.start(specs)
    try:
        for spec in specs[:first_bad]:
            np.testing.assert_array_equal(
                reads.read_chunk(spec, FirstError()), reader.read_tiles(spec)
            )
        with pytest.raises(SlideError, match=f"^{re.escape(str(damaged))}: ") as caught:
            reads.read_chunk(specs[first_bad], FirstError())
        with pytest.raises(SlideError) as again:  # the thread read no further
            reads.read_chunk(specs[first_bad], FirstError())
        assert again.value is caught.value
    finally:
        reads.close()
    assert read_ahead_threads() == []


def test_close_ends_a_read_ahead_that_waits_for_the_engine():
    reader, specs = reader_and_chunks(CMU_SLIDE)
    assert len(specs) >= 3
    reads = HostTiles(reader, max_bytes=1)  # one chunk ahead, then it waits
    reads.start(specs)
    np.testing.assert_array_equal(
        reads.read_chunk(specs[0], FirstError()), reader.read_tiles(specs[0])
    )
    reads.close()
    assert read_ahead_threads() == []
    with pytest.raises(Stopped):  # what a stopped engine's reader thread meets
        reads.read_chunk(specs[1], FirstError())
    reads.start(specs)  # started again on the same chunks: read from the first again
    try:
        np.testing.assert_array_equal(
            reads.read_chunk(specs[0], FirstError()), reader.read_tiles(specs[0])
        )
    finally:
        reads.close()


def test_a_chunk_asked_out_of_plan_order_is_refused_not_swapped():
    """The reads come in plan order: a caller asking for another chunk gets an error, never
    the next chunk's tiles under the wrong name."""
    reader, specs = reader_and_chunks(CMU_SLIDE)
    reads = HostTiles(reader)
    reads.start(specs)
    try:
        with pytest.raises(RuntimeError, match=rf"chunk \({specs[1].row}, {specs[1].col}\)"):
            reads.read_chunk(specs[1], FirstError())
        np.testing.assert_array_equal(
            reads.read_chunk(specs[0], FirstError()), reader.read_tiles(specs[0])
        )
    finally:
        reads.close()
