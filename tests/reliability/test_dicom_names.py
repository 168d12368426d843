"""A DICOM slide (a folder of .dcm files) run through the CLI by its folder or by any of its
files: one output folder, named after the slide's folder, which is where QuPath's import
script looks for an image opened from one of those files."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import (
    assert_complete_output,
    cli_args,
    leftovers,
    run_cli_inprocess,
)


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    pytest.importorskip("pydicom")
    from tests.wsi.dicom_slides import write_cmu_crop

    folder = tmp_path_factory.mktemp("dicom") / "case-7"
    write_cmu_crop(folder)
    return folder


@pytest.mark.parametrize("given", ["folder", "level-0.dcm", "level-1.dcm"])
def test_a_dicom_slide_is_named_after_its_folder(
    dicom_case, tiny_model_dir, tmp_path, capsys, given
):
    slide = dicom_case if given == "folder" else dicom_case / given
    out = tmp_path / "out"
    result = run_cli_inprocess(cli_args(slide, tiny_model_dir, out), capsys)
    assert result.code == 0, result.stderr
    assert leftovers(out) == ["case-7"]
    summary = assert_complete_output(out / "case-7")
    assert summary["slide"]["name"] == "case-7"
