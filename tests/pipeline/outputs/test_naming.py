"""wsi_segment.pipeline.outputs.naming: slide names stripped as QuPath strips them, so the
import script finds the output folder; an earlier version's folder is left alone."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR
from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.batch_inputs import parse_batch_input
from wsi_segment.pipeline.outputs.naming import extension, legacy_output_name, strip_extension
from wsi_segment.pipeline.outputs.output_name import default_output_name
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.run_warnings import slide_warnings
from wsi_segment.pipeline.segment import segment_slide

OS1_SLIDE = DATA_DIR / "OS-1-detail.ome.tif"

# name -> GeneralTools.stripExtension(name), as QuPath 0.6.0's own code returns it (run on a
# JVM for each name below)
QUPATH_STRIPPED = {
    "OS-1-detail.ome.tif": "OS-1-detail",
    "A.OME.TIFF": "A",
    "x.ome.zarr": "x",
    "x.nii.gz": "x",
    "x.tar.gz": "x",
    "a.ome.tif.gz": "a",
    "x.gz": "x",
    "a.b.ome.tif": "a.b",
    "CMU-1.svs": "CMU-1",
    "slide.v2.svs": "slide.v2",
    "x_1.mrxs": "x_1",
    "x.TIF": "x",
    "img.dcm": "img",
    "x.1-2": "x.1-2",  # '-' is no word character: no extension
    "x.é": "x.é",  # Java's \w is ASCII
    "x.": "x.",
    "x": "x",
    "..svs": ".",
    "..": "..",
}


@pytest.mark.parametrize("name", QUPATH_STRIPPED)
def test_strip_extension_is_qupaths(name: str) -> None:
    assert strip_extension(name) == QUPATH_STRIPPED[name]
    assert name.lower().endswith(extension(name))


def test_a_name_that_is_all_extension_is_kept() -> None:
    """QuPath strips '.svs' to ''; no folder can have that name, so the name stays (and is
    refused as hidden, like any slide named with a leading '.')."""
    assert strip_extension(".svs") == ".svs"


def test_output_names_of_multi_part_extensions() -> None:
    assert default_output_name("/x/OS-1-detail.ome.tif") == "OS-1-detail"
    assert default_output_name("/x/OS-1-detail.ome.tiff") == "OS-1-detail"
    assert default_output_name("https://host/a/b.ome.zarr/") == "b"
    assert legacy_output_name("/x/OS-1-detail.ome.tif") == "OS-1-detail.ome"


def test_a_batch_refuses_two_slides_for_one_folder(tmp_path: Path) -> None:
    """`a.ome.tif` and `a.svs` are one folder under the rule: found before any slide runs."""
    for name in ("a.ome.tif", "a.svs"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"would both write to the output folder 'a'"):
        parse_batch_input(tmp_path, tmp_path / "out")
    (tmp_path / "a.svs").unlink()
    assert [item.name for item in parse_batch_input(tmp_path, tmp_path / "out")] == ["a"]


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: (mtime_ns, bytes)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # two whole runs
def test_an_earlier_versions_folder_is_left_untouched(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A real OME-TIFF run under the name an earlier version gave it (`OS-1-detail.ome/`),
    then a run now, also with --overwrite: the new folder is `OS-1-detail/`, the old one
    keeps every byte and mtime, and the run says where both are."""
    params = SegmentParams(model_dir=tiny_model_dir, device="cpu")
    older = segment_slide(
        OS1_SLIDE, tmp_path, dataclasses.replace(params, output_name="OS-1-detail.ome")
    )
    assert older.out_dir == tmp_path / "OS-1-detail.ome"
    before = _tree(older.out_dir)
    assert slide_warnings(older) == []  # a chosen name: no earlier rule applied
    for overwrite in (False, True):
        result = segment_slide(
            OS1_SLIDE, tmp_path, dataclasses.replace(params, overwrite=overwrite)
        )
        assert result.status == "done" and result.out_dir == tmp_path / "OS-1-detail"
        assert _tree(older.out_dir) == before
        assert slide_warnings(result) == [
            f"{OS1_SLIDE}: {older.out_dir} holds this slide's outputs from a version that "
            "named the folder by Python's stem; it was left untouched, and this run's outputs "
            f"are in {result.out_dir} (the folder QuPath's import script looks for); remove "
            "the old folder when you no longer need it"
        ]
    assert sorted(os.listdir(tmp_path)) == ["OS-1-detail", "OS-1-detail.ome"]
    shutil.rmtree(older.out_dir)
    again = segment_slide(OS1_SLIDE, tmp_path, params)
    assert again.status == "up-to-date" and slide_warnings(again) == []


def test_a_dicom_slide_folder_is_named_after_the_folder(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`wsi-segment case-7/` (a DICOM slide folder): the run opens it by its level-0 file and
    names the outputs after the folder the user passed."""
    pytest.importorskip("pydicom")
    from tests.conftest import CMU_SLIDE
    from tests.wsi.dicom_slides import write_dicom_slide
    from wsi_segment.wsi.slide import open_slide

    with open_slide(CMU_SLIDE) as slide:
        rgb = slide.read_region((800, 1100), 0, (700, 500))
    folder = tmp_path / "case-7"
    write_dicom_slide(folder, rgb, 0.499)
    params = SegmentParams(model_dir=tiny_model_dir, runtime="torch")  # naming, not a runtime
    result = segment_slide(folder, tmp_path / "out", params)
    assert result.status == "done" and result.out_dir == tmp_path / "out" / "case-7"
    assert result.summary["slide"]["backend"] == "openslide"


def test_one_line_escapes_control_characters_and_separators_only() -> None:
    from wsi_segment.pipeline.outputs.naming import is_control, one_line

    text = "a\nb\tc\x1bd\u2028e\x85f ü 東京 \\ 'q'"
    assert one_line(text) == "a\\nb\\tc\\x1bd\\u2028e\\x85f ü 東京 \\ 'q'"
    assert len(one_line(text).splitlines()) == 1
    assert [ch for ch in text if is_control(ch)] == ["\n", "\t", "\x1b", "\u2028", "\x85"]


def test_a_dicom_slide_is_named_after_its_folder_whichever_file_is_given() -> None:
    """QuPath opens a DICOM slide by one of its .dcm files and the import script reads
    OUT/<the folder holding it>/: the folder, or any of its files, gives that name."""
    from wsi_segment.pipeline.outputs.naming import slide_stem

    assert slide_stem("/data/dicom/case-7") == "case-7"
    assert slide_stem("/data/dicom/case-7/") == "case-7"
    assert slide_stem("/data/dicom/case-7/level-0.dcm") == "case-7"
    assert slide_stem("/data/dicom/case-7/1.2.826.0.1.3680043.8.498.1.DCM") == "case-7"
    assert slide_stem("s3://bucket/case-9/level-1.dcm") == "case-9"
    assert slide_stem("level-0.dcm") == "level-0"  # no folder named: the file's own stem
    assert slide_stem("/data/OS-1-detail.ome.tif") == "OS-1-detail"


def test_the_import_script_finds_a_dicom_slide_by_its_folder() -> None:
    """The QuPath script's side of the rule: for an image opened from a .dcm file it reads
    OUT/<that file's folder>/tissue.geojson (Groovy is not run here; the rule is checked as
    written, and the Python side above)."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "docs" / "qupath" / "wsi_segment_import.groovy"
    text = script.read_text()
    assert "getCurrentServer().getURIs()" in text and "endsWith('.dcm')" in text
    assert "getParentFile()?.getName()" in text
    assert "new File(new File(OUT, dicomFolder), 'tissue.geojson')" in text


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("s3://lab/slides/case 1.svs", "case 1"),
        ("https://h/s/CMU-1.svs?X-Amz-Signature=dead&X-Amz-Expires=3600", "CMU-1"),
        ("https://h/s/with%20space.ome.tif#part", "with space"),
        ("http://h/dicom/case-7/frame.dcm?sig=1", "case-7"),
        ("file:///data/a%20b.svs", "a%20b"),  # a local path, read as written
    ],
)
def test_a_urls_output_name_is_its_paths_not_its_query(url: str, name: str) -> None:
    """A presigned URL's signature was part of the folder's name (a new folder each night,
    `x.svs?X-Amz-Signature=...`), and a %-escape was kept (`with%20space`)."""
    from wsi_segment.pipeline.outputs.output_name import slide_output_name

    assert slide_output_name(url) == name
