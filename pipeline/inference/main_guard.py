"""Refuse, before any decoder is spawned, a main script that would segment again in each."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

from wsi_segment.errors import ConfigError
from wsi_segment.gc_pause import parse_python

GUARD_FIX = (
    'put the code that runs segment_slide under `if __name__ == "__main__":` (each decoder '
    "process of the engine imports the main script again, and would run it), or pass "
    "decoders=0 (one reader thread, no processes)"
)


def check_main_guard() -> None:
    """Raise ConfigError before spawning where a decoder would segment again: a spawned child
    imports the parent's main script (as `__mp_main__`). Checked in the parent (no top-level
    `if __name__ ...` block) and in the child while it imports the script."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    importing = importing_main_script()
    if importing is not None:
        raise ConfigError(f"{importing}: segment_slide ran while a decoder process imported "
                          f"this script; {GUARD_FIX}")  # fmt: skip
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if path is None or spec_name.rpartition(".")[2] == "__main__":
        return  # interactive, -c, or a package's __main__: spawn does not re-run it
    try:
        tree = parse_python(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):
        return  # not a Python source file: nothing to check
    tests = (node.test for node in tree.body if isinstance(node, ast.If))
    if not any(isinstance(n, ast.Name) and n.id == "__name__" for t in tests for n in ast.walk(t)):
        raise ConfigError(f"{path}: this script has no `if __name__ == \"__main__\":` block, "
                          f"and the engine spawns decoder processes; {GUARD_FIX}")  # fmt: skip


def importing_main_script() -> str | None:
    """The parent's main script while this spawned child still imports it, else None:
    module-level code of `__mp_main__` is on the call stack only during that import."""
    frame = inspect.currentframe()
    while frame is not None:
        names = frame.f_globals
        if frame.f_code.co_name == "<module>" and names.get("__name__") == "__mp_main__":
            return str(names.get("__file__") or "the main script")
        frame = frame.f_back
    return None
