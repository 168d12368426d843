"""A TMA batch: each slide's own regions file, from the manifest's `roi` column, through the
real `wsi-segment batch` (the terminal's door, in a subprocess) into cohort.csv."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from tests.flows.conftest import CMU, DATA
from tests.reliability.conftest import run_cli
from tests.wsi import qupath_exports as qp


def test_a_manifest_s_regions_run_per_slide_and_give_a_row_per_region(
    tiny_model: Path, tmp_path: Path
) -> None:
    """CMU with its two cores (a regions file beside the manifest) and small.svs without
    one: CMU's rows are its regions, small's the whole slide; the batch says nothing of the
    column (it used to ignore it and run CMU whole, exit 0)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for src in (CMU, DATA / "small.svs"):
        shutil.copy2(src, slides / src.name)
    qp.two_cores(tmp_path / "cmu-cores.geojson")
    manifest = tmp_path / "tma.csv"
    manifest.write_text(
        "slide,name,roi\nslides/CMU-1-Small-Region.svs,cmu,cmu-cores.geojson\n"
        "slides/small.svs,small,\n"
    )
    out = tmp_path / "out"
    result = run_cli(["batch", manifest, "--model", tiny_model, "--out", out, "--quiet"])
    assert result.code == 0, result.stderr[-3000:]
    with open(out / "cohort.csv", encoding="utf-8", newline="") as f:
        rows = [(r["slide"], r["region"]) for r in csv.DictReader(f)]
    assert rows == [("cmu", "A1"), ("cmu", "B2"), ("small", "")], rows
    assert (out / "cmu" / "tissue.geojson").is_file()


def test_a_manifest_s_missing_regions_file_stops_the_batch_before_any_slide(
    tiny_model: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "tma.csv"
    manifest.write_text(f"slide,roi\n{CMU},cores-that-are-not-there.geojson\n")
    out = tmp_path / "out"
    result = run_cli(["batch", manifest, "--model", tiny_model, "--out", out, "--quiet"])
    assert result.code == 1, result.stderr[-3000:]  # as for any bad manifest row
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {manifest}:2: regions file ") and "not-there" in line
    assert not out.exists()
