"""The stager, the one batch filler of every read source: chunks' tiles copied into batches
of a fixed size across chunks, each chunk's memory given back once its last tile is copied,
the short last batch flushed with its tail zeroed (every forward pass has the batch size),
then the end marker. A CPU model's batches are numpy arrays."""

from __future__ import annotations

import queue

import numpy as np

from wsi_segment.pipeline.inference.compute_stage import ChunkTiles, StagedBatch, Stager
from wsi_segment.pipeline.inference.engine_state import FirstError


def _chunk(index: int, tiles: int, released: list[int]) -> ChunkTiles:
    """`tiles` 2 x 2 tiles of chunk `index`, each filled with index * 10 + its position."""
    values = np.arange(tiles, dtype=np.uint8) + index * 10
    pixels = np.ascontiguousarray(np.broadcast_to(values[:, None, None, None], (tiles, 2, 2, 3)))
    return ChunkTiles(index, pixels, lambda: released.append(index))


def _staged(chunks: list[ChunkTiles], batch: int) -> list[StagedBatch | None]:
    staged: queue.Queue[StagedBatch | None] = queue.Queue()
    errors = FirstError()
    Stager(batch, 2, "cpu", "cpu").run(iter(chunks), staged, errors)
    assert errors.error is None
    return [staged.get_nowait() for _ in range(staged.qsize())]


def test_batches_span_chunks_and_each_chunk_is_released_once_copied():
    released: list[int] = []
    chunks = [_chunk(0, 3, released), _chunk(2, 5, released), _chunk(3, 1, released)]
    *batches, end = _staged(chunks, 4)
    assert end is None
    assert [b.segments for b in batches] == [
        [(0, 0, 3), (2, 0, 1)],
        [(2, 1, 4)],
        [(3, 0, 1)],  # the short last batch
    ]
    assert [b.tiles[:, 0, 0, 0].tolist() for b in batches] == [
        [0, 1, 2, 20], [21, 22, 23, 24], [30, 0, 0, 0]
    ]  # fmt: skip
    assert [sum(count for _, _, count in b.segments) for b in batches] == [4, 4, 1]
    assert (batches[-1].tiles[1:] == 0).all()  # the padding: zero tiles, never another's
    assert all(b.tiles.shape == (4, 2, 2, 3) and b.ready is None for b in batches)
    assert all(isinstance(b.tiles, np.ndarray) for b in batches)
    assert released == [0, 2, 3]


def test_a_chunk_larger_than_a_batch_and_one_without_tiles():
    released: list[int] = []
    *batches, end = _staged([_chunk(5, 9, released), _chunk(6, 0, released)], 4)
    assert end is None
    assert [b.segments for b in batches] == [[(5, 0, 4)], [(5, 4, 4)], [(5, 8, 1)]]
    assert released == [5]  # a chunk without tiles is never copied, so never released
