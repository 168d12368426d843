"""wsi_segment.gc_pause. `parse_python`: a parse survives collections whose finalisers parse
too (CPython gh-106905, seen in CI as `SystemError: AST constructor recursion depth mismatch`
in a test reading the package's sources while a leaked Dask client was collected). With plain
`ast.parse` in place of `parse_python`, the first test fails on Python 3.11 before 3.11.8 (the
second checks that this Python is one)."""

from __future__ import annotations

import ast
import contextlib
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsi_segment.gc_pause import CollectorPauses, parse_python

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
    assert ast.dump(tree) == ast.dump(ast.parse(SOURCE))


@pytest.mark.skipif(sys.version_info >= (3, 11, 8), reason="CPython 3.11.8 fixed the count")
def test_the_finalisers_do_break_a_plain_parse_here() -> None:
    """The setup above is the bug: on this Python a plain `ast.parse` fails in it."""
    with collections_that_parse(), pytest.raises(SystemError, match="recursion depth mismatch"):
        ast.parse(SOURCE, "batch_console.py")


def test_overlapping_pauses_end_when_the_last_does() -> None:
    """Two threads' pauses, the first ended first (a model's load beside a parse): the
    collector stays paused until the second ends, then runs again as it did before."""
    was = gc.isenabled()
    gc.enable()
    pauses = CollectorPauses()
    first, second = pauses.paused(), pauses.paused()
    try:
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert not gc.isenabled()
        second.__exit__(None, None, None)
        assert gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


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
