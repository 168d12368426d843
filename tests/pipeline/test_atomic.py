"""Atomic output folders and parameter fingerprints, on the real file system."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.atomic import atomic_output_dir, params_fingerprint
from wsi.errors import OutputError


def _siblings(parent):
    return sorted(p.name for p in parent.iterdir())


def test_outputs_appear_on_success(tmp_path):
    final = tmp_path / "out" / "slide"
    with atomic_output_dir(final) as work:
        assert work.parent == final.parent and work.name.startswith(".slide.tmp-")
        (work / "a.txt").write_text("a")
        assert not final.exists()  # nothing visible while writing
    assert (final / "a.txt").read_text() == "a"
    assert _siblings(final.parent) == ["slide"]


def test_error_leaves_nothing(tmp_path):
    final = tmp_path / "slide"
    with pytest.raises(RuntimeError), atomic_output_dir(final) as work:
        (work / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert _siblings(tmp_path) == []


def test_overwrite_replaces_and_failure_keeps_old(tmp_path):
    final = tmp_path / "slide"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="--overwrite"), atomic_output_dir(final):
        pass
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(final, overwrite=True) as work:
        (work / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert _siblings(final) == ["old.txt"] and _siblings(tmp_path) == ["slide"]
    with atomic_output_dir(final, overwrite=True) as work:
        (work / "new.txt").write_text("new")
    assert _siblings(final) == ["new.txt"] and _siblings(tmp_path) == ["slide"]


def test_unwritable_parent(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # a file where the output folder's parent should be
    with pytest.raises(OutputError, match="writable"), atomic_output_dir(blocker / "slide"):
        pass


def test_params_fingerprint():
    a = params_fingerprint({"b": 1, "a": [1.5, (2, 3)], "c": {"y": None, "x": True}})
    b = params_fingerprint({"c": {"x": True, "y": None}, "a": [np.float64(1.5), [2, 3]], "b": 1})
    assert a == b and len(a) == 64 and int(a, 16) >= 0
    assert params_fingerprint({"b": 2}) != params_fingerprint({"b": 1})
