"""What is not ours is never deleted, and links are never followed (issue 22, items 1 and 8).

`--overwrite` replaces only a finished output of ours (a real folder whose summary.json is
ours and that holds only the files it lists, and in its zarr store only what a run writes
there); anything else at `<out>/<stem>`, and links at
any of our names (`<stem>`, `.<stem>.lock`, `.<stem>.partial`, `.<stem>.old`), give one
`error:` line naming the path, exit 1, and leave every byte where it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import (
    assert_clean_error,
    assert_complete_output,
    cli_args,
    leftovers,
    run_cli_inprocess,
)


def snapshot(root: Path) -> dict[str, object]:
    """Every path under `root` (links not followed) with its bytes, its link target or
    '<dir>': equal snapshots mean nothing was created, changed or removed."""
    seen: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                seen[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                seen[key] = "<dir>"
            else:
                seen[key] = path.read_bytes()
    return seen


@pytest.fixture(scope="module")
def finished_once(cmu_crop, tiny_model_dir, tmp_path_factory) -> Path:
    """`<out>` holding one finished output of ours for the CMU crop, made by one real run
    for the whole module (tests get copies of it: `finished`)."""
    from wsi_segment.flows.cli import main

    out = tmp_path_factory.mktemp("finished") / "out"
    assert main([str(a) for a in cli_args(cmu_crop, tiny_model_dir, out)]) == 0
    assert_complete_output(out / cmu_crop.stem)
    return out


@pytest.fixture
def finished(finished_once, tmp_path) -> Path:
    """A test's own `<out>` holding a finished output of ours for the CMU crop: a byte-for-byte
    copy of the module's one run (a real folder, as a run publishes it), so that what a test
    adds, moves or replaces there is its own."""
    out = tmp_path / "out"
    shutil.copytree(finished_once, out, symlinks=True)
    assert snapshot(out) == snapshot(finished_once)
    return out


def foreign_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "precious.txt").write_text("a week of annotations")
    (path / "sub").mkdir()
    (path / "sub" / "notes.txt").write_text("do not lose")
    return path


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "plain"])
def test_a_foreign_folder_is_never_replaced(cmu_crop, tiny_model_dir, tmp_path, capsys, overwrite):
    out = tmp_path / "out"
    folder = foreign_folder(out / cmu_crop.stem)
    before = snapshot(tmp_path)
    extra = ["--overwrite"] if overwrite else []
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, out, *extra), capsys)
    assert_clean_error(result, str(folder), "not a wsi-segment output", "move it away")
    assert snapshot(tmp_path) == before


def test_a_folder_with_a_summary_not_ours_is_never_replaced(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """A summary.json someone else wrote (another tool's) does not make the folder ours."""
    out = tmp_path / "out"
    folder = out / cmu_crop.stem
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text('{"fingerprint": 3, "tool": "other"}')
    (folder / "data.csv").write_text("x,y\n1,2\n")
    before = snapshot(tmp_path)
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, out, "--overwrite"), capsys)
    assert_clean_error(result, str(folder), "no summary.json of a finished wsi-segment run")
    assert snapshot(tmp_path) == before


def test_our_output_with_a_file_added_by_hand_is_not_replaced(
    finished, cmu_crop, tiny_model_dir, capsys
):
    """Notes put into a finished output make it more than ours: --overwrite would lose them."""
    folder = finished / cmu_crop.stem
    (folder / "review.txt").write_text("checked by Dr. X")
    before = snapshot(finished)
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, finished, "--overwrite"), capsys)
    assert_clean_error(result, str(folder), "review.txt", "did not write")
    assert snapshot(finished) == before


@pytest.mark.parametrize(
    "added", ["probabilities.ome.zarr/notes.txt", "probabilities.ome.zarr/0/my_analysis/"]
)
def test_our_output_with_a_file_added_inside_the_store_is_not_replaced(
    finished, cmu_crop, tiny_model_dir, capsys, added
):
    """Inside the zarr store too: only what a run writes there (metadata, chunk keys of its
    arrays, OME/, the label image) is ours."""
    folder = finished / cmu_crop.stem
    path = folder / added.rstrip("/")
    if added.endswith("/"):
        path.mkdir()
        (path / "result.csv").write_text("region,area\n1,2\n")
    else:
        path.write_text("checked by Dr. X")
    before = snapshot(finished)
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, finished, "--overwrite"), capsys)
    assert_clean_error(result, str(folder), added.rstrip("/"), "did not write")
    assert snapshot(finished) == before


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("0/0/9/9/9", "0/0/9"),  # the first key part is past the grid: named, not entered
        ("0/0/3/0/7", "0/0/3/0/7"),
        ("0/labels/classes/0/0/5", "0/labels/classes/0/0/5"),
    ],
)
def test_a_file_named_like_a_chunk_key_outside_the_grid_is_not_ours(
    finished, cmu_crop, tiny_model_dir, capsys, key, named
):
    """Ownership follows each array's chunk grid (its .zarray), not the shape of a name: the
    crop's level 0 is 4 x 1 x 1 chunks (class, y, x) and its label image 1 x 1, so a key past
    the grid on any axis is a person's file, and --overwrite leaves it and everything else
    in place."""
    folder = finished / cmu_crop.stem
    store = folder / "probabilities.ome.zarr"
    assert (store / "0/0/3/0/0").is_file() and (store / "0/labels/classes/0/0/0").is_file()
    assert not (store / "0/0/4").exists() and not (store / "0/0/0/1").exists()
    path = store / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("my own analysis, saved here by hand")
    before = snapshot(finished)
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, finished, "--overwrite"), capsys)
    assert_clean_error(result, str(folder), f"probabilities.ome.zarr/{named}", "did not write")
    assert snapshot(finished) == before


def test_a_users_file_at_a_chunk_key_of_a_store_without_chunks_is_not_ours(
    tiny_model_dir, tmp_path, capsys
):
    """A slide with no tissue leaves its arrays without chunk files; a person's file at a
    key inside the grid (`0/0/0/0/0`) is one more than summary.json counts: --overwrite
    refuses, naming the store, and the file stays (before: rc 0 and the file gone)."""
    from tests.conftest import DATA_DIR

    slide, out = DATA_DIR / "small.svs", tmp_path / "out"
    assert run_cli_inprocess(cli_args(slide, tiny_model_dir, out), capsys).code == 0
    store = out / "small" / "probabilities.ome.zarr"
    assert not [p for p in store.rglob("*") if p.is_file() and p.name.isdigit()]
    users = store / "0/0/0/0/0"
    users.parent.mkdir(parents=True)
    users.write_text("user\n")
    before = snapshot(out)
    result = run_cli_inprocess(cli_args(slide, tiny_model_dir, out, "--overwrite"), capsys)
    assert_clean_error(result, "probabilities.ome.zarr: 1 chunk files where the run wrote 0")
    assert snapshot(out) == before and users.read_text() == "user\n"


def test_overwrite_replaces_our_own_output(finished, cmu_crop, tiny_model_dir, capsys):
    """The clean case stays clean: our finished output is redone, nothing else is left."""
    folder = finished / cmu_crop.stem
    inode = folder.stat().st_ino
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, finished, "--overwrite"), capsys)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert folder.stat().st_ino != inode  # a new folder was published
    assert_complete_output(folder)
    assert leftovers(finished) == [cmu_crop.stem]


def test_a_replace_cut_short_is_finished_by_the_next_run(
    finished, cmu_crop, tiny_model_dir, capsys
):
    """A run killed between setting the old output aside and publishing the new one leaves
    `.<stem>.old` (ours, recognised by its summary.json) and no `<stem>`: the next run
    removes it and publishes."""
    folder = finished / cmu_crop.stem
    old = finished / f".{cmu_crop.stem}.old"
    os.replace(folder, old)
    (old / "overlay.png").unlink()  # its removal had begun: summary.json goes last
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, finished), capsys)
    assert result.code == 0, result.stderr
    assert_complete_output(folder)
    assert leftovers(finished) == [cmu_crop.stem]


def test_a_foreign_folder_at_the_old_name_is_never_removed(
    finished, cmu_crop, tiny_model_dir, capsys
):
    old = foreign_folder(finished / f".{cmu_crop.stem}.old")
    before = snapshot(finished)
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, finished, "--overwrite"), capsys)
    assert_clean_error(result, str(old), "not a wsi-segment output")
    assert snapshot(finished) == before


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "plain"])
@pytest.mark.parametrize("target", ["our-output", "foreign", "dangling"])
def test_output_folder_that_is_a_symlink_is_refused(
    finished, cmu_crop, tiny_model_dir, tmp_path, capsys, overwrite, target
):
    """`<out>/<stem>` a link, to our own output elsewhere, to someone's folder, or to
    nothing: refused before any work, the link and what it points at untouched, no
    `.<stem>.old` (a rerun used to leave one and then fail after the whole slide)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if target == "our-output":
        dest = elsewhere / "moved"
        shutil.move(finished / cmu_crop.stem, dest)
    elif target == "foreign":
        dest = foreign_folder(elsewhere / "theirs")
        shutil.rmtree(finished / cmu_crop.stem)
    else:
        dest = elsewhere / "missing"
        shutil.rmtree(finished / cmu_crop.stem)
    link = finished / cmu_crop.stem
    link.symlink_to(dest, target_is_directory=True)
    before = snapshot(tmp_path)
    extra = ["--overwrite"] if overwrite else []
    for _ in range(2):  # and again: nothing left over changes the answer
        result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, finished, *extra), capsys)
        assert_clean_error(result, str(link), "symbolic link", "remove the link")
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["lock", "partial", "old"])
@pytest.mark.parametrize("target", ["missing", "file", "folder"])
def test_our_hidden_names_as_symlinks_are_refused(
    cmu_crop, tiny_model_dir, tmp_path, capsys, name, target
):
    """`.<stem>.lock` (used to create a file where it pointed), `.<stem>.partial` or
    `.<stem>.old` as a link: refused, the link left, nothing created or removed there."""
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = elsewhere / "victim"
    if target == "file":
        dest.write_text("keep me")
    elif target == "folder":
        foreign_folder(dest)
    link = out / f".{cmu_crop.stem}.{name}"
    link.symlink_to(dest)
    before = snapshot(tmp_path)
    result = run_cli_inprocess(cli_args(cmu_crop, tiny_model_dir, out, "--overwrite"), capsys)
    assert_clean_error(result, str(link), "symbolic link")
    assert snapshot(tmp_path) == before


def test_a_symlink_loop_or_dangling_link_as_the_slide_says_so(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """Not "no such file": the fix is the link, not the name. Both in one run, then a good
    slide still finishes."""
    (tmp_path / "a.svs").symlink_to("b.svs")
    (tmp_path / "b.svs").symlink_to("a.svs")
    (tmp_path / "gone.svs").symlink_to("moved-away.svs")
    out = tmp_path / "out"
    slides = [tmp_path / "a.svs", tmp_path / "gone.svs"]
    result = run_cli_inprocess([*slides, *cli_args(cmu_crop, tiny_model_dir, out)], capsys)
    text = assert_clean_error(result, count=2)
    assert f"{slides[0]}: symbolic link loop" in text, text
    assert f"{slides[1]}: symbolic link to 'moved-away.svs', which does not exist" in text
    assert "no such file" not in text
    assert leftovers(out) == [cmu_crop.stem]
    assert_complete_output(out / cmu_crop.stem)


def test_a_foreign_folder_is_refused_before_the_model_loads(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """The folder in the way is said at once: a model whose weights cannot load (here
    damaged) is never reached, so no one waits for a model load to learn of the folder."""
    model = tmp_path / "damaged-model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "out"
    folder = foreign_folder(out / cmu_crop.stem)
    before = snapshot(tmp_path)
    result = run_cli_inprocess(cli_args(cmu_crop, model, out, "--overwrite"), capsys)
    assert_clean_error(result, str(folder), "not a wsi-segment output", "move it away")
    assert snapshot(tmp_path) == before
