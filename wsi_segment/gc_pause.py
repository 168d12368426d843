"""Work run with Python's cyclic garbage collector paused, and why each needs it.

- Importing torch, timm and smp makes hundreds of thousands of objects and few cycles; the
  full collections they trigger cost ~20 % of the import time (`gc_paused`, around the model's
  load).
- CPython 3.11 before 3.11.8 keeps the AST constructor's recursion count per interpreter, not
  per call: when a collection runs during `ast.parse` and a finaliser parses in turn (a leaked
  Dask client's `__del__` whose error's traceback 3.11 formats with `ast.parse`, for one), the
  outer parse fails with `SystemError: AST constructor recursion depth mismatch` (CPython
  gh-106905). `parse_python` parses with collection paused: the parser runs no Python code of
  its own, so nothing else can parse in between.

The collector is one per process, and threads pause it at once (the model's load beside the
main thread's parse): `CollectorPauses` counts them, so it runs again only when the last ends.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import threading
from collections.abc import Iterator


class CollectorPauses:
    """The pauses of the process's collector in progress: it is disabled while any is, and
    enabled after the last only if it was when the first began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # its blocks allocate nothing: no collection in them
        self._depth = 0
        self._enable_after = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._enable_after = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._enable_after:
                    gc.enable()


# one per process, as the collector it pauses is
_PAUSES = CollectorPauses()


def gc_paused() -> contextlib.AbstractContextManager[None]:
    """No automatic collection in the block (cycles made meanwhile are collected later)."""
    return _PAUSES.paused()


def parse_python(source: str | bytes, filename: str) -> ast.Module:
    """`ast.parse(source, filename)`, with the collector paused for the call."""
    with gc_paused():
        return ast.parse(source, filename)
