"""Batch manifests are checked before any slide runs (pipeline/batch_inputs.py).

Missing columns, missing slides, unparsable mpp, duplicate output names and names that
would write outside the output folder are each one clear error; through `wsi-segment
batch` they are one `error:` line, exit 1, and nothing written.
"""

from __future__ import annotations

import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR
from tests.reliability.conftest import assert_clean_error, assert_nothing_written, run_cli_inprocess
from wsi_segment.errors import ConfigError, DatasetError, WsiSegmentError
from wsi_segment.pipeline.batch_inputs import parse_batch_input, read_manifest
from wsi_segment.pipeline.outputs.output_name import check_output_name


def manifest(tmp_path, text: str, name: str = "manifest.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_manifest(tmp_path):
    path = manifest(
        tmp_path,
        f"slide,mpp,name\n{CMU_SLIDE},0.5,cmu\n\n{DATA_DIR / 'small.svs'},,\n",
    )
    items = parse_batch_input(path, tmp_path / "out")
    assert [(i.name, i.mpp) for i in items] == [("cmu", 0.5), ("small", None)]


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("file,mpp\nx.svs,0.5\n", DatasetError, "no slide column"),
        ("", DatasetError, "no slide column"),
        ("slide,mpp\n,0.5\n", DatasetError, "column is empty"),
        ("slide\n", DatasetError, "lists no slides"),
        ("slide\nnot_there.svs\n", DatasetError, "not found"),
        (f"slide,mpp\n{CMU_SLIDE},abc\n", ConfigError, "not a number"),
        (f"slide,mpp\n{CMU_SLIDE},-1\n", ConfigError, "positive"),
        (f"slide,mpp\n{CMU_SLIDE},nan\n", ConfigError, "positive"),
    ],
    ids=[
        "no-slide-column",
        "empty-file",
        "empty-path",
        "no-rows",
        "missing-slide",
        "mpp-text",
        "mpp-negative",
        "mpp-nan",
    ],
)
def test_bad_manifest(tmp_path, text, error, words):
    path = manifest(tmp_path, text)
    with pytest.raises(error, match=words) as info:
        parse_batch_input(path, tmp_path / "out")
    assert "manifest.csv" in str(info.value)


def test_missing_slides_are_all_listed(tmp_path):
    path = manifest(tmp_path, "slide\na.svs\nb.svs\n")
    with pytest.raises(DatasetError, match=r"2 slide\(s\) not found") as info:
        parse_batch_input(path, tmp_path / "out")
    assert "a.svs" in str(info.value) and "b.svs" in str(info.value)


@pytest.mark.parametrize(
    "names",
    [("same", "same"), ("Same", "same"), (None, None)],
    ids=["explicit", "case-insensitive", "same-stem-two-folders"],
)
def test_duplicate_output_names(tmp_path, names):
    a = tmp_path / "a" / "slide.svs"
    b = tmp_path / "b" / "slide.svs"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(CMU_SLIDE.read_bytes()[:100])
    rows = [f"{a},{names[0] or ''}", f"{b},{names[1] or ''}"]
    path = manifest(tmp_path, "slide,name\n" + "\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match="would both write"):
        parse_batch_input(path, tmp_path / "out")


@pytest.mark.parametrize(
    "name",
    ["../x", "../../etc", "/abs/x", "a/b", "a\\b", ".hidden", "..", ".", "C:x", "x\0y"],
)
def test_output_names_that_escape_the_output_folder(tmp_path, name):
    with pytest.raises(ConfigError, match="plain folder name"):
        check_output_name(name, "manifest.csv:2")
    if "\0" in name:
        return  # csv cannot carry NUL reliably; the name check above covers it
    path = manifest(tmp_path, f'slide,name\n{CMU_SLIDE},"{name}"\n')
    with pytest.raises(ConfigError, match="plain folder name"):
        read_manifest(path)


def test_unicode_and_quotes_in_names_are_fine(tmp_path):
    path = manifest(tmp_path, f'slide,name\n{CMU_SLIDE},"Patient ü ""7"" 東京"\n')
    (item,) = parse_batch_input(path, tmp_path / "out")
    assert item.name == 'Patient ü "7" 東京'


@pytest.mark.parametrize(
    "text",
    ["slide,name\n{slide},../escape\n", "file\n{slide}\n", "slide\nmissing.svs\n"],
    ids=["escape", "no-column", "missing-slide"],
)
def test_bad_manifest_through_the_batch_cli(tmp_path, capsys, text):
    """Checked before Prefect starts: one error line, exit 1, no output folder."""
    path = manifest(tmp_path, text.format(slide=CMU_SLIDE))
    out = tmp_path / "out"
    result = run_cli_inprocess(["batch", path, "--out", out], capsys)
    assert_clean_error(result, "manifest.csv")
    assert_nothing_written(out)
    assert not out.exists()


def test_errors_are_wsi_segment_errors():
    assert issubclass(ConfigError, WsiSegmentError) and issubclass(DatasetError, WsiSegmentError)
