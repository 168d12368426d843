"""The one batch filler of every read source (`batch_takes`): batches across chunks, one
take at a time, each chunk's end marked where its last tiles are taken."""

from __future__ import annotations

from wsi_segment.pipeline.inference.compute_stage import batch_takes


def test_batches_span_chunks_and_mark_where_chunks_and_batches_end():
    chunks = [(0, 3, "a"), (2, 5, "b"), (3, 1, "c")]  # (index, tiles, payload)
    takes = list(batch_takes(iter(chunks), 4))
    got = [(t.segment, t.at, t.payload, t.ends_chunk, t.ends_batch) for t in takes]
    assert got == [
        ((0, 0, 3), 0, "a", True, False),
        ((2, 0, 1), 3, "b", False, True),
        ((2, 1, 4), 0, "b", True, True),
        ((3, 0, 1), 0, "c", True, False),  # the short last batch: the source flushes it
    ]
    big = [(t.segment, t.ends_batch) for t in batch_takes([(5, 9, None)], 4)]
    assert big == [((5, 0, 4), True), ((5, 4, 4), True), ((5, 8, 1), False)]
    assert list(batch_takes([(1, 0, None)], 4)) == []  # a chunk without tiles takes nothing
