"""`write_chunk_by_chunk` writes what `array[region] = data` writes, one chunk a call: after a
chunk that cannot be written, no later chunk is written, so nothing zarr still runs can
recreate folders after a failed run's cleanup (issue 77, item 8: a full disk)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zarr

from wsi_segment.pipeline.outputs.chunk_writes import write_chunk_by_chunk

KEYS = {"name": "v2", "separator": "/"}


def array(path, shape=(3, 10, 13), chunks=(1, 4, 4)):
    return zarr.create_array(
        str(path), shape=shape, chunks=chunks, dtype="uint8", fill_value=0, chunk_key_encoding=KEYS
    )


@pytest.mark.parametrize("start", [(0, 0, 0), (1, 3, 5), (2, 8, 12), (0, 4, 4)])
def test_the_same_array_as_one_write(tmp_path, start):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3 - start[0], 10 - start[1], 13 - start[2]), dtype=np.uint8)
    one, by_chunk = array(tmp_path / "one"), array(tmp_path / "by_chunk")
    region = tuple(slice(s, s + n) for s, n in zip(start, data.shape, strict=True))
    one[region] = data
    write_chunk_by_chunk(by_chunk, start, data)
    np.testing.assert_array_equal(by_chunk[:], one[:])
    write_chunk_by_chunk(by_chunk, start, data[:, :0])  # an empty block writes nothing
    np.testing.assert_array_equal(by_chunk[:], one[:])


def test_nothing_after_a_chunk_that_cannot_be_written(tmp_path):
    """Chunk (0, 0, 1)'s file cannot be made (a folder holds its name): the write raises
    there, and chunks after it in C order are never written, now or a moment later."""
    target = array(tmp_path / "a", shape=(1, 4, 16))
    (tmp_path / "a" / "0" / "0" / "1").mkdir(parents=True)  # where chunk 0/0/1 would go
    with pytest.raises(OSError):
        write_chunk_by_chunk(target, (0, 0, 0), np.ones((1, 4, 16), np.uint8))
    time.sleep(0.3)  # anything still running would have written by now
    written = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*"))
    assert "0/0/0" in written  # the chunk before it
    assert "0/0/2" not in written and "0/0/3" not in written
