"""An output folder the run could not write is refused when the run starts, by the kernel's
answer for the user that runs it, not at the end after the model's load (tens of seconds on a
cold cache, for each slide of a batch). Real users (`tests.lab_users`), real folders, the real
CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import tmpfs
from tests.lab_users import LabUsers, lab_users  # noqa: F401
from wsi_segment.errors import OutputError
from wsi_segment.pipeline.outputs.shared_access import refuse_unusable_root

SLIDE = Path(__file__).resolve().parents[2] / "data" / "CMU-1-Small-Region.svs"


def cli_as(users: LabUsers, user: str, *args: str) -> tuple[int, str, Path]:
    """The real CLI run as `user` with a fresh runtime cache; its exit code, stderr and that
    cache folder (a model's load creates it)."""
    cache = users.root / f"home-{user}" / "runtime-cache"  # the user's own home
    done = users.run(
        user,
        [sys.executable, "-m", "wsi_segment", *args, "--quiet"],
        env={"WSI_SEGMENT_CACHE_DIR": str(cache)},
    )
    return done.returncode, done.stderr, cache


@pytest.mark.parametrize("batch", [False, True], ids=["slide", "batch"])
def test_an_unwritable_parent_is_refused_before_the_model_loads(
    lab_users: LabUsers,  # noqa: F811
    batch: bool,
) -> None:
    parent = lab_users.root / "results"
    parent.mkdir(mode=0o755)  # root's: the service may not create its output folder there
    out = parent / "nightly"
    slides = [SLIDE.parent] if batch else [SLIDE]  # tests/data: a folder of slides
    args = ["batch", *map(str, slides)] if batch else list(map(str, slides))
    code, stderr, cache = cli_as(lab_users, lab_users.service, *args, "--out", str(out))
    assert code == 1, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"error: cannot write outputs: {out} does not exist and cannot be created: {parent} "
        f"is not writable by user {lab_users.service} (root:root, mode 0755); choose a "
        "writable folder with --out"
    )
    assert "Traceback" not in stderr
    assert not cache.exists()  # no model was loaded
    assert list(parent.iterdir()) == []


def test_a_read_only_file_system_is_named(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        with pytest.raises(OutputError) as caught:
            refuse_unusable_root(ro / "out")
        assert str(caught.value) == (
            f"cannot write outputs: {ro / 'out'} is on a read-only file system; choose a "
            "writable folder with --out"
        )
        assert list(ro.iterdir()) == []


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a person's")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "runs"):
        with pytest.raises(OutputError) as caught:
            refuse_unusable_root(out)
        assert str(caught.value) == (
            f"cannot write outputs in {out}: {tmp_path / 'notes.txt'} is not a folder; choose a "
            "folder with --out"
        )
    assert (tmp_path / "notes.txt").read_text() == "a person's"


def test_a_writable_or_creatable_folder_passes_and_nothing_is_made(tmp_path: Path) -> None:
    refuse_unusable_root(tmp_path)
    refuse_unusable_root(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
