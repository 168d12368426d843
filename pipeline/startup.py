"""Work that `pipeline.segment.prepare` runs beside the model load.

Importing torch, timm and smp is most of a small run's fixed cost and holds one core; the
model loads in a `Background` thread while the main thread detects tissue and plans, and
the overlay's thumbnail is read on the other core meanwhile. `gc_paused` makes the
imports themselves cheaper.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, TypeVarTuple

import numpy as np

from wsi_segment.wsi.slide import open_slide

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Background(Generic[T]):
    """Run a function in a daemon thread; `result()` joins it and re-raises its error."""

    def __init__(self, fn: Callable[[*Ts], T], *args: *Ts) -> None:
        self._result: list[T] = []  # the value, once the thread has returned one
        self._error: BaseException | None = None
        self.seconds = 0.0

        def target() -> None:
            t0 = time.perf_counter()
            try:
                self._result.append(fn(*args))
            except BaseException as exc:  # handed to the caller of result()
                self._error = exc
            self.seconds = time.perf_counter() - t0

        self._thread = threading.Thread(
            target=target, name=getattr(fn, "__name__", "bg"), daemon=True
        )
        self._thread.start()

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result[0]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while torch, timm and smp are imported: their hundreds of thousands of
    new objects trigger full collections that cost ~20 % of the import time; the few
    cycles made meanwhile are collected afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_overlay_thumbnail(slide_path: str, backend: str, mpp: float | None) -> np.ndarray:
    """overlay.png's thumbnail, with a handle of its own (the main thread detects tissue);
    openslide decoding and PIL's reduce release the GIL, so this runs beside the import."""
    from wsi_segment.pipeline.outputs.finish_outputs import THUMB_SIZE, overlay_thumbnail

    with open_slide(slide_path, backend=backend, mpp=mpp) as slide:
        return overlay_thumbnail(slide, THUMB_SIZE)
