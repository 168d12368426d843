"""wsi_segment.gc_pause. `parse_python`: a parse survives collections whose finalisers parse
too (CPython gh-106905, seen in CI as `SystemError: AST constructor recursion depth mismatch`
in a test reading the package's sources while a leaked Dask client was collected). With plain
`ast.parse` in place of `parse_python`, the first test fails on this project's Python 3.11."""

from __future__ import annotations

import ast
import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsi_segment.gc_pause import parse_python

SOURCE = (Path(__file__).resolve().parents[1] / "flows" / "batch_console.py").read_text()


class ParsesWhenCollected:
    """Cyclic garbage whose finaliser parses, and leaves more such garbage (up to a budget),
    so that every collection during a parse runs a nested parse."""

    budget = 0
    parsed = 0

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        ast.parse("x = (1 + 2) * 3")
        ParsesWhenCollected.parsed += 1
        if ParsesWhenCollected.budget > 0:
            ParsesWhenCollected.budget -= 1
            ParsesWhenCollected()


@contextlib.contextmanager
def collections_that_parse() -> Iterator[None]:
    """A collection at every allocation, each with a finaliser that parses."""
    threshold = gc.get_threshold()
    gc.collect()
    ParsesWhenCollected.budget, ParsesWhenCollected.parsed = 10_000, 0
    ParsesWhenCollected()
    gc.set_threshold(1)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        ParsesWhenCollected.budget = 0
        gc.collect()


def test_a_parse_gives_the_tree_while_finalisers_parse() -> None:
    with collections_that_parse():
        tree = parse_python(SOURCE, "batch_console.py")
    assert ParsesWhenCollected.parsed > 0  # the finalisers did parse, around the call
    assert ast.dump(tree) == ast.dump(ast.parse(SOURCE))


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_left_as_it_was(enabled: bool) -> None:
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        parse_python(b"x = 1\n", "x.py")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_a_syntax_error_names_the_file() -> None:
    with pytest.raises(SyntaxError) as caught:
        parse_python("def (", "broken.py")
    assert caught.value.filename == "broken.py"
    assert gc.isenabled()
