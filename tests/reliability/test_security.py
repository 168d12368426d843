"""Untrusted strings (file names, class names from model.json) never break the outputs:
GeoJSON, summary.json and the zarr attributes are written by a JSON serializer, so quotes,
newlines, backslashes, braces and non-ASCII text round-trip exactly. A slide whose name
would make its output folder anything but one folder inside --out is refused, and so is a
slide path with a control character (a newline would split every line that names it), and
every path the outputs record that is not UTF-8."""

from __future__ import annotations

import json
import os
import shutil

import ome_types
import pytest
import zarr

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import (
    assert_clean_error,
    assert_complete_output,
    assert_nothing_written,
    leftovers,
    run_cli_inprocess,
)

NASTY_STEM = "slide \"quoted\" 'single' \\back\\ }{], ü 東京 <script> ~$`!"
NASTY_CLASSES = ['T"E', "NE\nC", "LYM ü 東京", '</TAS>\\"}']


def all_strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from all_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from all_strings(v)


def test_nasty_file_and_class_names_round_trip(tiny_model_dir, tmp_path, capsys):
    slide = tmp_path / f"{NASTY_STEM}.svs"
    shutil.copy(CMU_SLIDE, slide)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    doc = json.loads((model / "model.json").read_text())
    doc["classes"] = NASTY_CLASSES
    doc["name"] = 'model "x"\n{ü}'
    doc["mpp"] = 8.0  # the whole CMU slide in ~140 x 185 model pixels: seconds
    (model / "model.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    # torch: names, not the runtime choice (an edited model.json is a new model to export)
    args = [slide, "--model", model, "--out", out, "--quiet", "--no-gate", "--runtime", "torch"]
    result = run_cli_inprocess(args, capsys)
    assert result.code == 0, result.stderr
    out_dir = out / NASTY_STEM
    summary = assert_complete_output(out_dir)
    assert summary["slide"]["path"] == str(slide)
    assert summary["slide"]["name"] == NASTY_STEM
    assert summary["model"]["name"] == 'model "x"\n{ü}'
    assert summary["model"]["classes"] == NASTY_CLASSES
    assert set(summary["classes"]) == {*NASTY_CLASSES, "Unclassified"}  # always reported

    fc = json.loads((out_dir / "tissue.geojson").read_text(encoding="utf-8"))
    names = [f["properties"]["classification"]["name"] for f in fc["features"]]
    assert names[0] == "Tissue" and set(names[1:]) <= set(NASTY_CLASSES) and len(names) > 1
    strings = set(all_strings(fc))
    # ids or names derived from the slide name keep it intact (never cut at a quote)
    for s in strings:
        if "slide " in s:
            assert NASTY_STEM in s, s

    attrs = zarr.open_group(str(out_dir / "probabilities.ome.zarr" / "0"), mode="r").attrs.asdict()
    assert [c["label"] for c in attrs["omero"]["channels"]] == NASTY_CLASSES
    # the OME-XML Bio-Formats reads carries them too, escaped, and stays valid
    xml = (out_dir / "probabilities.ome.zarr" / "OME" / "METADATA.ome.xml").read_text("utf-8")
    image = ome_types.from_xml(xml, validate=True).images[0]
    assert [c.name for c in image.pixels.channels] == NASTY_CLASSES


@pytest.mark.parametrize(
    ("file_name", "folder_name"),
    [("..tif", "."), ("...tif", ".."), (".hidden.tif", ".hidden")],
)
def test_slide_names_that_are_not_a_folder_inside_out_are_refused(
    file_name, folder_name, cmu_crop, tiny_model_dir, tmp_path, capsys
):
    # `..tif` has the stem '.': its outputs would have replaced --out itself (with
    # --overwrite, everything already in it); `...tif` the stem '..', the folder above.
    slides = tmp_path / "slides"
    slides.mkdir()
    slide = slides / file_name
    shutil.copy(cmu_crop, slide)
    out = tmp_path / "out"
    args = [slide, "--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    result = run_cli_inprocess([*args, "--overwrite"], capsys)
    text = assert_clean_error(result, str(slide), repr(folder_name), "rename the slide file")
    assert "'name' column" in text
    assert_nothing_written(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slides"]
    assert sorted(p.name for p in slides.iterdir()) == [file_name]


def test_a_url_ending_in_dotdot_is_refused_before_it_is_read(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    url = "http://127.0.0.1:9/slides/case-1.svs/.."  # port 9: nothing listens, nothing read
    args = [url, "--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    result = run_cli_inprocess(args, capsys)
    assert_clean_error(result, url, "'..'", "point the URL at the slide file")
    assert_nothing_written(out)
    assert [p.name for p in tmp_path.iterdir()] == []


CONTROL_NAMES = {  # file name -> how the refusal writes it, on one line
    "case\n7.svs": "case\\n7.svs",
    "case\t7.svs": "case\\t7.svs",
    "case\x1b[31m7.svs": "case\\x1b[31m7.svs",  # a terminal escape
    "case\u20287.svs": "case\\u20287.svs",  # LINE SEPARATOR: str.splitlines() breaks there
}


@pytest.mark.parametrize("name", list(CONTROL_NAMES))
def test_a_slide_name_with_a_control_character_is_refused_on_one_line(
    name, cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """One `error:` line naming the file with the character escaped and the fix; no output
    folder carrying the character, nothing written at all; a good slide in the same call
    still finishes."""
    slides = tmp_path / "slides"
    slides.mkdir()
    slide = slides / name
    shutil.copy(cmu_crop, slide)
    out = tmp_path / "out"
    args = [slide, cmu_crop, "--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    result = run_cli_inprocess(args, capsys)
    text = assert_clean_error(result, str(slides / CONTROL_NAMES[name]), "control characters")
    assert "rename the file" in text
    assert text.count("\n") == 0 and text.isprintable(), text
    assert [p.name for p in out.iterdir()] == [cmu_crop.stem]  # the good slide only
    assert_complete_output(out / cmu_crop.stem)


def test_a_batch_with_a_control_character_in_a_slide_path_is_refused_before_it_runs(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """A folder holding `case\\n7.svs`: one line naming it (escaped) and the fix, before
    Prefect starts; nothing written."""
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_crop, slides / "good.svs")
    shutil.copy(cmu_crop, slides / "case\n7.svs")
    out = tmp_path / "out"
    args = ["batch", slides, "--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    result = run_cli_inprocess(args, capsys)
    text = assert_clean_error(result, f"{slides}/case\\n7.svs", "rename the file")
    assert text.isprintable(), text
    assert not out.exists() or leftovers(out) == []


LATIN1_NAME = os.fsdecode(b"caf\xe9")  # a name written in Latin-1: not UTF-8
LATIN1_SHOWN = "caf\\xe9"  # as the error line writes it


def test_a_slide_path_that_is_not_utf8_is_refused_on_one_line(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """`caf\\xe9.svs` (Latin-1 bytes): one line naming it escaped and the fix, before any work
    (it ran the slide, then crashed writing summary.json, until 2026-11-28); a good slide in
    the same call finishes; a batch over their folder is refused before it runs."""
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_crop, slides / f"{LATIN1_NAME}.svs")
    out = tmp_path / "out"
    common = ["--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    result = run_cli_inprocess([slides / f"{LATIN1_NAME}.svs", cmu_crop, *common], capsys)
    text = assert_clean_error(result, f"{slides}/{LATIN1_SHOWN}.svs", "not valid UTF-8")
    assert "rename the file" in text and text.isprintable(), text
    assert [p.name for p in out.iterdir()] == [cmu_crop.stem]
    assert_complete_output(out / cmu_crop.stem)
    shutil.copy(cmu_crop, slides / "good.svs")
    result = run_cli_inprocess(["batch", slides, *common[:2], "--out", tmp_path / "b"], capsys)
    assert_clean_error(result, f"{slides}/{LATIN1_SHOWN}.svs", "not valid UTF-8")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("option", ["--out", "--model", "--roi"])
def test_an_option_path_that_is_not_utf8_is_refused_before_any_work(
    option, cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """An output folder, model folder or ROI file whose path is not UTF-8 would end the run
    after its work, unable to write summary.json: it is refused at once, nothing written."""
    bad = tmp_path / LATIN1_NAME
    out = bad if option == "--out" else tmp_path / "out"
    model = bad if option == "--model" else tiny_model_dir
    if option == "--model":
        shutil.copytree(tiny_model_dir, bad)
    roi = ["--roi", bad] if option == "--roi" else []
    if option == "--roi":
        bad.write_text(
            json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [99, 0], [0, 99], [0, 0]]]})
        )
    args = [cmu_crop, "--model", model, "--out", out, "--mpp", "0.5", "--quiet", *roi]
    result = run_cli_inprocess(args, capsys)
    text = assert_clean_error(
        result, f"{tmp_path}/{LATIN1_SHOWN}", "not valid UTF-8", code=result.code
    )
    assert result.code in (1, 2) and text.isprintable(), text
    assert not (tmp_path / "out").exists()
    assert option != "--out" or not bad.exists()


def test_a_manifest_name_with_a_tab_is_refused(cmu_crop, tiny_model_dir, tmp_path, capsys):
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f'slide,name\n{cmu_crop},"case\t7"\n')
    out = tmp_path / "out"
    args = ["batch", manifest, "--model", tiny_model_dir, "--out", out, "--quiet"]
    result = run_cli_inprocess(args, capsys)
    text = assert_clean_error(result, f"{manifest}:2", "'case\\t7'", "control character")
    assert text.isprintable(), text
    assert not out.exists() or leftovers(out) == []
