"""Batch inputs: folders, globs and manifests expand to checked slides; bad ones fail early."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_segment.errors import ConfigError, DatasetError
from wsi_segment.pipeline.batch_inputs import BatchItem, parse_batch_input


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_lists_slide_files_sorted(tmp_path: Path) -> None:
    b = _touch(tmp_path / "b.svs")
    a = _touch(tmp_path / "a.ndpi")
    c = _touch(tmp_path / "c.tif")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.svs")
    _touch(tmp_path / "sub" / "d.svs")  # folders are not searched recursively
    items = parse_batch_input(tmp_path, tmp_path / "out")
    assert [i.slide for i in items] == [str(a), str(b), str(c)]
    assert [i.name for i in items] == ["a", "b", "c"]
    assert all(i.mpp is None for i in items)


def test_glob_matches_recursively(tmp_path: Path) -> None:
    one = _touch(tmp_path / "x" / "one.svs")
    two = _touch(tmp_path / "y" / "two.svs")
    items = parse_batch_input(str(tmp_path / "**" / "*.svs"), tmp_path / "out")
    assert [i.slide for i in items] == [str(one), str(two)]


def test_single_slide_file(tmp_path: Path) -> None:
    one = _touch(tmp_path / "one.svs")
    assert parse_batch_input(one, tmp_path / "out") == [BatchItem(str(one), None, "one")]


def test_manifest_with_mpp_names_and_relative_paths(tmp_path: Path) -> None:
    a = _touch(tmp_path / "slides" / "a.svs")
    b = _touch(tmp_path / "b.tif")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"Slide,MPP,name\nslides/a.svs,0.25,case-1\n{b},,\n\n")
    items = parse_batch_input(manifest, tmp_path / "out")
    assert items == [BatchItem(str(a), 0.25, "case-1"), BatchItem(str(b), None, "b")]


def test_manifest_path_column_alone(tmp_path: Path) -> None:
    a = _touch(tmp_path / "a.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\na.svs\n")
    assert parse_batch_input(manifest, tmp_path / "out") == [BatchItem(str(a), None, "a")]


@pytest.mark.parametrize("bad", ["../x", "a/b", "/abs", "..", ".", ".hidden", "a\\b", "c:x"])
def test_manifest_refuses_names_escaping_the_output_folder(tmp_path: Path, bad: str) -> None:
    _touch(tmp_path / "a.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,name\na.svs,{bad}\n")
    with pytest.raises(ConfigError, match="output name"):
        parse_batch_input(manifest, tmp_path / "out")


def test_duplicate_output_names_are_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "b.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,name\na.svs,same\nb.svs,Same\n")
    with pytest.raises(ConfigError, match="both write"):
        parse_batch_input(manifest, tmp_path / "out")


def test_same_stem_in_two_folders_is_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "x" / "s.svs")
    _touch(tmp_path / "y" / "s.tif")
    with pytest.raises(ConfigError, match="both write"):
        parse_batch_input(str(tmp_path / "*" / "s.*"), tmp_path / "out")


def test_manifest_without_slide_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,mpp\na.svs,0.5\n")
    with pytest.raises(DatasetError, match="no slide column"):
        parse_batch_input(manifest, tmp_path / "out")


def test_manifest_missing_slides_are_all_named(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide\nnope1.svs\nnope2.svs\n")
    with pytest.raises(DatasetError, match=r"2 slide\(s\) not found: .*nope1.svs, .*nope2.svs"):
        parse_batch_input(manifest, tmp_path / "out")


@pytest.mark.parametrize("mpp", ["abc", "-1", "0", "nan"])
def test_manifest_bad_mpp(tmp_path: Path, mpp: str) -> None:
    _touch(tmp_path / "a.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,mpp\na.svs,{mpp}\n")
    with pytest.raises(ConfigError, match="mpp"):
        parse_batch_input(manifest, tmp_path / "out")


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        parse_batch_input(tmp_path / "nothing-here", tmp_path / "out")
    with pytest.raises(DatasetError, match="no slide files"):
        parse_batch_input(tmp_path, tmp_path / "out")
    with pytest.raises(DatasetError, match="matches no files"):
        parse_batch_input(str(tmp_path / "*.svs"), tmp_path / "out")
    with pytest.raises(DatasetError, match="manifest CSV not found"):
        parse_batch_input(tmp_path / "missing.csv", tmp_path / "out")
    empty = tmp_path / "empty.csv"
    empty.write_text("slide\n")
    with pytest.raises(DatasetError, match="lists no slides"):
        parse_batch_input(empty, tmp_path / "out")


def test_a_named_pipe_in_a_folder_glob_or_manifest_is_a_slide_that_fails_not_skipped(
    tmp_path: Path,
) -> None:
    """A FIFO named like a slide was left out without a word (`is_file` is False for it): it
    is listed, so its own run refuses it with a clear error (`wsi.slide`), and a manifest
    naming one does not call it "not found"."""
    import os

    folder = tmp_path / "in"
    a = _touch(folder / "a.svs")
    pipe = folder / "b.svs"
    os.mkfifo(pipe)
    (folder / "c.svs").mkdir()  # a folder named like a slide is not one
    out = tmp_path / "out"
    assert [i.slide for i in parse_batch_input(folder, out)] == [str(a), str(pipe)]
    assert [i.slide for i in parse_batch_input(str(folder / "*.svs"), out)] == [str(a), str(pipe)]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide\n{pipe}\n")
    assert [i.slide for i in parse_batch_input(manifest, tmp_path / "out")] == [str(pipe)]


def _dicom_folder(folder: Path, files: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(files):
        _touch(folder / f"level-{i}.dcm")
    return folder


def test_a_folder_of_dicom_slide_folders_is_a_batch_of_them(tmp_path: Path) -> None:
    """Each folder of .dcm files is one DICOM slide, named after the folder (the name QuPath's
    import script reads); slide files beside them are slides too; other folders are not."""
    cohort = tmp_path / "cohort"
    _dicom_folder(cohort / "case-1")
    _dicom_folder(cohort / "case-2", files=3)
    _touch(cohort / "case-3.svs")
    (cohort / "notes").mkdir()
    (cohort / "notes" / "readme.txt").write_text("x")
    _dicom_folder(cohort / ".hidden")
    items = parse_batch_input(cohort, tmp_path / "out")
    assert [(Path(i.slide).name, i.name) for i in items] == [
        ("case-1", "case-1"),
        ("case-2", "case-2"),
        ("case-3.svs", "case-3"),
    ]


def test_a_dicom_slide_folder_given_to_batch_says_what_to_pass(tmp_path: Path) -> None:
    slide = _dicom_folder(tmp_path / "case-1")
    with pytest.raises(DatasetError) as err:
        parse_batch_input(slide, tmp_path / "out")
    text = str(err.value)
    assert text.startswith(f"{slide}: holds the .dcm files of one DICOM slide")
    assert f"wsi-segment {slide}" in text and "manifest .csv" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"folders of \.dcm files: DICOM slides.*manifest"):
        parse_batch_input(empty, tmp_path / "out")


def test_a_manifest_may_list_a_dicom_slide_folder_or_one_of_its_files(tmp_path: Path) -> None:
    _dicom_folder(tmp_path / "case-1")
    _dicom_folder(tmp_path / "case-2")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide\ncase-1\ncase-2/level-0.dcm\n")
    items = parse_batch_input(manifest, tmp_path / "out")
    assert [i.name for i in items] == ["case-1", "case-2"]


def test_a_manifest_keeps_urls_as_written(tmp_path: Path) -> None:
    """`Path` collapsed `//` and joined the URL to the CSV's folder (`m/s3:/bucket/...`): a
    manifest, the one way to batch remote slides, refused them as not found."""
    local = _touch(tmp_path / "slides" / "a.svs")
    manifest = tmp_path / "m" / "list.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"slide,name\nfile://{local},local\ns3://lab-bucket/case1.svs,\n")
    items = parse_batch_input(manifest, tmp_path / "out")
    assert items == [
        BatchItem(f"file://{local}", None, "local"),
        BatchItem("s3://lab-bucket/case1.svs", None, "case1"),
    ]


def test_a_broken_link_in_a_folder_or_glob_is_a_slide_that_fails_not_the_batch(
    tmp_path: Path,
) -> None:
    """Found there, it runs as a slide and its own run names the link (`wsi.slide_path`);
    the whole batch was refused as "1 slide(s) not found". A manifest listing a slide that
    is not there is still refused at once (test_manifest_missing_slides_are_all_named)."""
    folder = tmp_path / "in"
    a = _touch(folder / "a.svs")
    (folder / "gone.svs").symlink_to("/nonexistent/gone.svs")
    (folder / "loop.svs").symlink_to("loop.svs")
    out = tmp_path / "out"
    want = [str(a), str(folder / "gone.svs"), str(folder / "loop.svs")]
    assert [i.slide for i in parse_batch_input(folder, out)] == want
    assert [i.slide for i in parse_batch_input(str(folder / "*.svs"), out)] == want


def test_a_glob_leaves_out_the_batch_s_own_outputs(tmp_path: Path) -> None:
    """`data/**/*.tif` with `--out data/out --ome-tiff` matched last night's
    probabilities.ome.tif files: the next night two of them clashed, or one was segmented."""
    slide = _touch(tmp_path / "data" / "case.tif")
    _touch(tmp_path / "data" / "out" / "case" / "probabilities.ome.tif")
    pattern = str(tmp_path / "data" / "**" / "*.tif")
    assert [i.slide for i in parse_batch_input(pattern, tmp_path / "data" / "out")] == [str(slide)]
    with pytest.raises(DatasetError, match="the pattern matches no files"):
        parse_batch_input(
            str(tmp_path / "data" / "out" / "**" / "*.tif"), tmp_path / "data" / "out"
        )


@pytest.mark.parametrize("suffix", [".txt", ".tsv"])
def test_a_list_of_slides_not_saved_as_csv_says_so(tmp_path: Path, suffix: str) -> None:
    """It was opened as one slide: "not a readable slide ... copy it again"."""
    listing = tmp_path / f"list{suffix}"
    listing.write_text(f"slide\n{_touch(tmp_path / 'a.svs')}\n")
    with pytest.raises(DatasetError, match=r"must be a manifest \.csv.*save it as \.csv"):
        parse_batch_input(listing, tmp_path / "out")


def test_a_manifest_s_missing_slide_with_a_line_break_is_named_on_one_line(
    tmp_path: Path,
) -> None:
    """Control characters are refused before missing slides are listed: the list would
    print the path's line break as is."""
    manifest = tmp_path / "m.csv"
    manifest.write_text('slide\n"case\n7.svs"\n')
    with pytest.raises(ConfigError, match="control characters") as err:
        parse_batch_input(manifest, tmp_path / "out")
    assert "\n" not in str(err.value)


def _regions(path: Path) -> Path:
    """A QuPath export with one rectangle annotation (a core), as `--roi` takes."""
    from tests.wsi import qupath_exports as qp

    path.parent.mkdir(parents=True, exist_ok=True)
    return qp.export(path, [qp.annotation(qp.rect(10, 10, 90, 90), "core-1", name="A1")])


def test_a_manifest_s_roi_column_is_each_slide_s_regions_relative_to_the_manifest(
    tmp_path: Path,
) -> None:
    """The `roi` column was silently ignored: a TMA batch ran whole slides. Now each row's
    regions file (relative to the manifest, as its slides are) becomes that slide's `roi`;
    an empty cell is the whole slide."""
    import dataclasses

    from wsi_segment.pipeline.batch_inputs import params_for
    from wsi_segment.pipeline.params import SegmentParams

    _touch(tmp_path / "s" / "a.svs")
    _touch(tmp_path / "s" / "b.svs")
    cores = _regions(tmp_path / "regions" / "a-cores.geojson")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,name,roi\ns/a.svs,a,regions/a-cores.geojson\ns/b.svs,b,\n")
    a, b = parse_batch_input(manifest, tmp_path / "out")
    assert (a.roi, b.roi) == (str(cores), None)
    params = SegmentParams()
    assert params_for(a, params) == dataclasses.replace(params, roi=cores)
    assert params_for(b, params) is params


def test_a_manifest_s_missing_or_bad_regions_file_is_refused_naming_its_row(
    tmp_path: Path,
) -> None:
    from wsi_segment.errors import RoiError

    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "b.svs")
    _regions(tmp_path / "a.geojson")
    (tmp_path / "b.geojson").write_text("not json")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,roi\na.svs,a.geojson\nb.svs,missing.geojson\n")
    with pytest.raises(DatasetError, match=rf"^{tmp_path / 'm.csv'}:3: regions file .*missing"):
        parse_batch_input(manifest, tmp_path / "out")
    manifest.write_text("slide,roi\na.svs,a.geojson\nb.svs,b.geojson\n")
    with pytest.raises(RoiError, match=rf"^{tmp_path / 'm.csv'}:3: .*b\.geojson"):
        parse_batch_input(manifest, tmp_path / "out")


def test_an_unknown_manifest_column_is_refused_not_ignored(tmp_path: Path) -> None:
    """`regions` for `roi` (or any typo) would run whole slides without a word."""
    _touch(tmp_path / "a.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,name,regions\na.svs,a,cores.geojson\n")
    with pytest.raises(DatasetError, match=r"m\.csv:1: unknown manifest column\(s\) 'regions'"):
        parse_batch_input(manifest, tmp_path / "out")


def test_regions_given_both_by_roi_and_by_the_manifest_are_refused(tmp_path: Path) -> None:
    from wsi_segment.pipeline.batch_inputs import check_regions
    from wsi_segment.pipeline.params import SegmentParams

    cores = _regions(tmp_path / "cores.geojson")
    with_column = [BatchItem("a.svs", None, "a", str(cores)), BatchItem("b.svs", None, "b")]
    check_regions(with_column, SegmentParams())  # the column alone
    check_regions(with_column[1:], SegmentParams(roi=cores))  # --roi alone
    with pytest.raises(ConfigError, match="regions given twice"):
        check_regions(with_column, SegmentParams(roi=cores))
