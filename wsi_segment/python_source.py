"""Parse Python source into an AST without a garbage collector's finaliser parsing too.

CPython 3.11 keeps the AST constructor's recursion count per interpreter, not per call: when a
collection runs during `ast.parse` and a finaliser parses in turn (a leaked Dask client's
`__del__` whose error's traceback 3.11 formats with `ast.parse`, for one), the outer parse fails
with `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905). Collection
is paused for the parse: the constructor runs no Python code of its own, so nothing else can
parse in between.
"""

from __future__ import annotations

import ast
import gc


def parse_python(source: str | bytes, filename: str) -> ast.Module:
    """`ast.parse(source, filename)`, with the collector paused for the call (and as it was
    after it)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename)
    finally:
        if was_enabled:
            gc.enable()
