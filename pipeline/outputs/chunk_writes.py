"""Writing a zarr array one chunk per call, so that a failed write leaves nothing running.

zarr 3 runs the chunk writes of one `array[region] = data` concurrently on its own event
loop, and when one of them fails (a full disk) the call raises while the others still run:
they create their chunk's folders after the run has removed its partial output, leaving
empty folders behind (issue 77, item 8). A call that covers one chunk has nothing else in
flight when it returns or raises, and the chunks after a failed one are never started.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import zarr


def write_chunk_by_chunk(array: zarr.Array[Any], start: tuple[int, ...], data: np.ndarray) -> None:
    """`array[start : start + data.shape] = data`, one chunk of `array` per call, in C order."""
    spans = []
    for origin, size, chunk in zip(start, data.shape, array.chunks, strict=True):
        if size == 0:
            return
        first, last = origin // chunk, (origin + size - 1) // chunk
        spans.append(
            [
                (max(origin, k * chunk), min(origin + size, (k + 1) * chunk))
                for k in range(first, last + 1)
            ]
        )
    for box in itertools.product(*spans):
        region = tuple(slice(a, b) for a, b in box)
        local = tuple(slice(a - o, b - o) for (a, b), o in zip(box, start, strict=True))
        array[region] = data[local]
