"""`not_our_output` knows exactly what a run writes inside its zarr store: a store made by
the real writers (pyramid levels, label image, OME metadata) is ours; one more file or
folder anywhere in it, or a link, is named, and nothing is read but names and each array's
`.zarray` (its chunk grid: a name shaped like a chunk key outside it is not ours)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsi_segment.pipeline.output_files import STORE_NAME
from wsi_segment.pipeline.outputs.label_image import (
    create_label_image,
    finalize_label_pyramid,
    label_level0_path,
)
from wsi_segment.pipeline.outputs.ome_zarr import (
    create_probability_store,
    finalize_pyramid,
    level0_path,
)
from wsi_segment.pipeline.outputs.ownership import not_our_output, store_chunk_files
from wsi_segment.pipeline.outputs.summary import write_summary


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """A finished output folder: a full store (4 classes, 3 levels, labels) and summary."""
    folder = tmp_path_factory.mktemp("ours") / "slide"
    store = folder / STORE_NAME
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    create_probability_store(store, list("ABCD"), colors, (150, 200), (16, 16), 8.0, 16.0)
    create_label_image(store)
    rng = np.random.default_rng(0)
    zarr.open_array(str(level0_path(store)), mode="r+")[:] = rng.integers(1, 255, (4, 150, 200))
    zarr.open_array(str(label_level0_path(store)), mode="r+")[:] = rng.integers(1, 5, (150, 200))
    levels = finalize_pyramid(store, min_size=64)
    finalize_label_pyramid(store, levels)
    assert levels == 3
    summary = {"schema_version": 1, "fingerprint": "f", "output": {"files": [STORE_NAME]}}
    write_summary(folder / "summary.json", summary)
    return folder


def test_a_store_the_writers_made_is_ours(output):
    chunks = [p for p in (output / STORE_NAME).rglob("*") if p.name.isdigit() and p.is_file()]
    assert len(chunks) == 4 * (130 + 35 + 12) + 130 + 35 + 12  # every chunk of every level
    assert not_our_output(output) is None


INTRUDERS = {  # what a person adds -> what the refusal names (a foreign folder, not inside)
    "notes.txt": "notes.txt",
    "0/my_analysis/": "0/my_analysis",
    "0/0/notes.txt": "0/0/notes.txt",
    "0/0/2/notes.txt": "0/0/2/notes.txt",
    "0/0/2/3/4.orig": "0/0/2/3/4.orig",
    "0/0/2/3/77/": "0/0/2/3/77",  # a folder where the last key part is a file
    "0/0/2/3/77/1": "0/0/2/3/77",
    "0/1/x/": "0/1/x",
    "0/labels/mine/": "0/labels/mine",
    "0/labels/classes/0/3/77/1": "0/labels/classes/0/3/77",  # labels have 2 key parts
    "0/labels/classes/.zarray": "0/labels/classes/.zarray",  # a group, not an array
    # Shaped like chunk keys, outside the grid (level 0: 4 x 10 x 13 chunks, level 1: 4 x 5 x 7)
    "0/0/4/0/0": "0/0/4",
    "0/0/9/9/9": "0/0/9",
    "0/0/0/10/0": "0/0/0/10",
    "0/0/3/9/13": "0/0/3/9/13",
    "0/1/0/5/0": "0/1/0/5",
    "0/labels/classes/0/10/0": "0/labels/classes/0/10",
    "0/labels/classes/2/0/4": "0/labels/classes/2/0/4",
    "OME/notes.txt": "OME/notes.txt",
    "OME/0/": "OME/0",
    ".DS_Store": ".DS_Store",
}


@pytest.mark.parametrize("intruder", list(INTRUDERS))
def test_anything_else_in_the_store_is_named(tmp_path, output, intruder):
    folder = tmp_path / "slide"
    shutil.copytree(output, folder)
    path = folder / STORE_NAME / intruder.rstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if intruder.endswith("/"):
        path.mkdir()
        (path / "result.csv").write_text("x\n")
    else:
        path.write_text("mine")
    problem = not_our_output(folder)
    assert problem is not None
    assert f"did not write ({STORE_NAME}/{INTRUDERS[intruder]})" in problem, problem


@pytest.mark.parametrize("where", ["OME/link", "0/0/2/3/link", "0/0/2/3/9"])
def test_a_link_in_the_store_is_not_ours(tmp_path, output, where):
    """Even in place of a chunk file; the check does not follow it."""
    folder = tmp_path / "slide"
    shutil.copytree(output, folder)
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    link = folder / STORE_NAME / where
    link.unlink(missing_ok=True)  # 0/0/2/3/9 is a chunk
    link.symlink_to(target)
    problem = not_our_output(folder)
    assert problem is not None and f"{STORE_NAME}/{where}" in problem, problem


def test_the_grid_is_read_from_the_arrays_own_metadata(output):
    """The keys the test above places outside the grid are inside a larger one: the last
    chunk of each axis exists, so the grid is the array's, not a guess."""
    store = output / STORE_NAME
    assert (store / "0/0/3/9/12").is_file() and (store / "0/1/3/4/6").is_file()
    assert (store / "0/labels/classes/0/9/12").is_file()
    assert (store / "0/labels/classes/2/0/3").is_file()


@pytest.mark.parametrize("damage", ["missing", "not json", "other separator"])
def test_an_array_without_its_grid_owns_no_chunk_keys(tmp_path, output, damage):
    """A level whose .zarray is gone or not ours: its chunk-named files are not claimed."""
    folder = tmp_path / "slide"
    shutil.copytree(output, folder)
    meta = folder / STORE_NAME / "0" / "2" / ".zarray"
    if damage == "missing":
        meta.unlink()
    elif damage == "not json":
        meta.write_text("{")
    else:
        meta.write_text(meta.read_text().replace('"/"', '"."'))
    problem = not_our_output(folder)
    assert problem is not None and f"{STORE_NAME}/0/2/0" in problem, problem


def test_a_file_where_the_store_should_be_is_not_ours(tmp_path):
    """Only the store is a folder; a listed file that is a folder is someone's."""
    folder = tmp_path / "slide"
    (folder / "overlay.png").mkdir(parents=True)
    (folder / "overlay.png" / "mine.txt").write_text("x")
    summary = {"schema_version": 1, "fingerprint": "f", "output": {"files": ["overlay.png"]}}
    write_summary(folder / "summary.json", summary)
    problem = not_our_output(folder)
    assert problem is not None and "overlay.png" in problem


def test_the_store_counts_its_chunk_files_by_their_names(output):
    """`store_chunk_files`: every array's chunk files (the pyramid's and the labels'), what a
    run records in summary.json before it is done."""
    assert store_chunk_files(output / STORE_NAME) == 4 * (130 + 35 + 12) + 130 + 35 + 12


def test_a_file_named_like_a_chunk_the_run_did_not_write_is_not_ours(tmp_path, output):
    """A store the run left with fewer chunk files than its grid holds (no tissue: none at
    all): a person's file at a chunk key inside the grid is one more than summary.json
    counts, so it is named and the folder is not ours; a chunk of ours deleted is no reason."""
    folder = tmp_path / "slide"
    shutil.copytree(output, folder)
    written = store_chunk_files(folder / STORE_NAME)
    summary = {"schema_version": 1, "fingerprint": "f"}
    summary["output"] = {"files": [STORE_NAME], "store_chunk_files": written}
    write_summary(folder / "summary.json", summary)
    assert not_our_output(folder) is None
    (folder / STORE_NAME / "0/0/0/0/0").unlink()  # one of ours gone
    assert not_our_output(folder) is None
    (folder / STORE_NAME / "0/0/0/0/0").write_text("user\n")  # a person's, where ours was
    summary["output"]["store_chunk_files"] = written - 1  # the run wrote one fewer
    write_summary(folder / "summary.json", summary)
    why = not_our_output(folder)
    assert why is not None and f"{written} chunk files where the run wrote {written - 1}" in why
