"""Outputs that cannot be written: one clear error, nothing partial left.

Tests may run as root, which ignores permission bits, so "not writable" is made real:
- an output root below a regular file (ENOTDIR for everyone, root included);
- a read-only tmpfs mount (EROFS, root included) and a tiny tmpfs (ENOSPC mid-run);
  both need mount rights (root in this container) and are skipped without them.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import tmpfs
from tests.reliability.conftest import (
    assert_clean_error,
    assert_nothing_written,
    cli_args,
    leftovers,
    run_cli_inprocess,
)


def test_output_root_below_a_regular_file(cmu_crop, tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, blocker / "out"), capsys)
    assert_clean_error(result, "not_a_folder", "--out")
    assert blocker.read_text() == "x"


def test_output_root_is_a_regular_file(cmu_crop, tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "out.txt"
    blocker.write_text("x")
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, blocker), capsys)
    assert_clean_error(result, "out.txt", "--out")
    assert blocker.read_text() == "x"


def test_slide_output_name_taken_by_a_file(cmu_crop, tiny_model_dir, tmp_path, capsys):
    """`<out>/<stem>` exists as a file: refused, the file is left alone, no partial folder."""
    out = tmp_path / "out"
    out.mkdir()
    (out / cmu_crop.stem).write_text("someone else's file")
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, out), capsys)
    if result.code == 0:  # replaced only with --overwrite semantics would be a bug
        pytest.fail(f"overwrote a file that is not an output folder: {result.stdout}")
    assert_clean_error(result, cmu_crop.stem)
    assert (out / cmu_crop.stem).read_text() == "someone else's file"
    assert leftovers(out) == [cmu_crop.stem]


def test_read_only_output_folder(cmu_crop, tiny_model_dir, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        assert not os.access(ro, os.W_OK) or os.geteuid() == 0
        result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, ro), capsys)
        assert_clean_error(result, str(ro), "--out")
        assert list(ro.iterdir()) == []


def test_disk_full_mid_run(cmu_crop, tiny_model_dir, tmp_path, capsys):
    """A 64 KiB file system: the lock and partial folder fit, the outputs do not."""
    with tmpfs(tmp_path / "full", "size=64k") as full:
        out = full / "out"
        result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, out), capsys)
        assert_clean_error(result, "disk full", "free space")
        assert_nothing_written(out)
