"""The stager, the one batch filler of every read source: chunks' tiles copied into batches
of a fixed size across chunks, each chunk's memory given back once its last tile is copied,
the short last batch flushed, then the end marker."""

from __future__ import annotations

import queue

import torch

from wsi_segment.pipeline.inference.compute_stage import ChunkTiles, StagedBatch, Stager
from wsi_segment.pipeline.inference.engine_state import FirstError


def _chunk(index: int, tiles: int, released: list[int]) -> ChunkTiles:
    """`tiles` 2 x 2 tiles of chunk `index`, each filled with index * 10 + its position."""
    values = torch.arange(tiles, dtype=torch.uint8) + index * 10
    pixels = values.view(-1, 1, 1, 1).expand(tiles, 2, 2, 3).contiguous()
    return ChunkTiles(index, pixels, lambda: released.append(index))


def _staged(chunks: list[ChunkTiles], batch: int) -> list[StagedBatch | None]:
    staged: queue.Queue[StagedBatch | None] = queue.Queue()
    errors = FirstError()
    cpu = torch.device("cpu")
    Stager(batch, 2, cpu, cpu).run(iter(chunks), staged, errors)
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
        [0, 1, 2, 20], [21, 22, 23, 24], [30]
    ]  # fmt: skip
    assert all(b.tiles.shape[1:] == (2, 2, 3) and b.ready is None for b in batches)
    assert released == [0, 2, 3]


def test_a_chunk_larger_than_a_batch_and_one_without_tiles():
    released: list[int] = []
    *batches, end = _staged([_chunk(5, 9, released), _chunk(6, 0, released)], 4)
    assert end is None
    assert [b.segments for b in batches] == [[(5, 0, 4)], [(5, 4, 4)], [(5, 8, 1)]]
    assert released == [5]  # a chunk without tiles is never copied, so never released
