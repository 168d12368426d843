"""Untrusted strings (file names, class names from model.json) never break the outputs:
GeoJSON, summary.json and the zarr attributes are written by a JSON serializer, so quotes,
newlines, backslashes, braces and non-ASCII text round-trip exactly."""

from __future__ import annotations

import json
import shutil

import zarr

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import assert_complete_output, run_cli_inprocess

NASTY_STEM = "slide \"quoted\" 'single' \\back\\ }{],\nnewline\ttab ü 東京 <script>"
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
    args = [slide, "--model", model, "--out", out, "--quiet", "--no-gate"]
    result = run_cli_inprocess(args, capsys)
    assert result.code == 0, result.stderr
    out_dir = out / NASTY_STEM
    summary = assert_complete_output(out_dir)
    assert summary["slide"]["path"] == str(slide)
    assert summary["slide"]["name"] == NASTY_STEM
    assert summary["model"]["name"] == 'model "x"\n{ü}'
    assert summary["model"]["classes"] == NASTY_CLASSES
    assert set(summary["classes"]) == set(NASTY_CLASSES)

    fc = json.loads((out_dir / "tissue.geojson").read_text(encoding="utf-8"))
    names = [f["properties"]["classification"]["name"] for f in fc["features"]]
    assert names[0] == "Tissue" and set(names[1:]) <= set(NASTY_CLASSES) and len(names) > 1
    strings = set(all_strings(fc))
    # ids or names derived from the slide name keep it intact (never cut at a quote)
    for s in strings:
        if "slide " in s:
            assert NASTY_STEM in s, s

    attrs = zarr.open_group(str(out_dir / "probabilities.ome.zarr"), mode="r").attrs.asdict()
    assert [c["label"] for c in attrs["omero"]["channels"]] == NASTY_CLASSES
