"""Output folders appear all at once, never half-written, and one run at a time."""

from __future__ import annotations

import pytest

from pipeline.output_dir import OutputDir, read_previous_summary
from wsi.errors import OutputError


def _siblings(parent):
    return sorted(p.name for p in parent.iterdir() if not p.name.endswith(".lock"))


def test_outputs_appear_on_commit_only(tmp_path):
    root = tmp_path / "out"
    with OutputDir(root, "slide", overwrite=False) as out:
        (out.work_dir / "summary.json").write_text('{"fingerprint": "x"}')
        assert not (root / "slide").exists()  # nothing visible while writing
        out.commit()
    assert _siblings(root) == ["slide"]
    assert read_previous_summary(root / "slide") == {"fingerprint": "x"}


def test_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), OutputDir(tmp_path, "slide", False) as out:
        (out.work_dir / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert _siblings(tmp_path) == []


def test_overwrite_replaces_and_failure_keeps_old(tmp_path):
    final = tmp_path / "slide"
    final.mkdir()
    (final / "summary.json").write_text("{}")
    with (
        pytest.raises(OutputError, match="--overwrite"),
        OutputDir(tmp_path, "slide", False) as out,
    ):
        out.commit()
    with pytest.raises(KeyboardInterrupt), OutputDir(tmp_path, "slide", True) as out:
        (out.work_dir / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert _siblings(final) == ["summary.json"] and _siblings(tmp_path) == ["slide"]
    with OutputDir(tmp_path, "slide", True) as out:
        (out.work_dir / "new.txt").write_text("new")
        out.commit()
    assert _siblings(final) == ["new.txt"] and _siblings(tmp_path) == ["slide"]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    with OutputDir(tmp_path, "slide", False) as first:
        with pytest.raises(OutputError, match="another wsi-segment run"):
            OutputDir(tmp_path, "slide", False).__enter__()
        assert first.work_dir.is_dir()  # the refused run did not touch the first's work
    with OutputDir(tmp_path, "slide", False):  # released: the next run proceeds
        pass


def test_partial_folder_of_a_killed_run_is_discarded(tmp_path):
    stale = tmp_path / ".slide.partial"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    with OutputDir(tmp_path, "slide", False) as out:
        assert list(out.work_dir.iterdir()) == []


def test_unwritable_parent(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # a file where the output root should be
    with pytest.raises(OutputError, match="writable"), OutputDir(blocker / "o", "s", False):
        pass
