"""Work run with Python's cyclic garbage collector paused, and why each needs it.

- Importing torch, timm and smp makes hundreds of thousands of objects and few cycles; the
  full collections they trigger cost ~20 % of the import time (`gc_paused`, around the model's
  load).
- CPython 3.11 keeps the AST constructor's recursion count per interpreter, not per call: when
  a collection runs during `ast.parse` and a finaliser parses in turn (a leaked Dask client's
  `__del__` whose error's traceback 3.11 formats with `ast.parse`, for one), the outer parse
  fails with `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905).
  `parse_python` parses with collection paused: the constructor runs no Python code of its
  own, so nothing else can parse in between.
"""

from __future__ import annotations

import ast
import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic collection in the block; the collector as it was after it (cycles made
    meanwhile are collected later)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_python(source: str | bytes, filename: str) -> ast.Module:
    """`ast.parse(source, filename)`, with the collector paused for the call."""
    with gc_paused():
        return ast.parse(source, filename)
