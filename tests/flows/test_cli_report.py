"""`wsi-segment report OUT`: the door to `pipeline.morning_report` (the table and the page
are tested in tests/pipeline/test_morning_report.py and tests/flows/test_batch_report.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.conftest import DATA


def test_the_report_command(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from wsi_segment.flows.cli import main
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    out = tmp_path / "out"
    params = SegmentParams(tiny_model, precision="fp32", runtime="torch", device="cpu")
    segment_slide(DATA / "small.svs", out, params)
    (out / "damaged").mkdir()
    (out / "damaged" / "summary.json").write_text("{")
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        str(out / "report.html"),
        str(out / "cohort.csv"),
        "2 slide(s), 1 need a look",
    ]
    assert (out / "cohort.csv").read_text().count("\n") == 3
    # not a folder of outputs: one error line, exit 1, nothing written
    assert main(["report", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {tmp_path / 'nothing'} is not a folder of wsi-segment outputs; give the --out folder\n"
    )
    assert not (tmp_path / "nothing").exists()
    # a folder holding no output (a typo naming the slides' folder): refused, nothing written
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "notes.txt").write_text("mine")
    (slides / "case-1").mkdir()  # a DICOM slide folder, say: not an output
    assert main(["report", str(slides)]) == 1
    assert capsys.readouterr().err == (
        f"error: {slides} holds no wsi-segment outputs (no slide's output folder, no failure "
        "record); give the --out folder of the runs\n"
    )
    assert sorted(p.name for p in slides.iterdir()) == ["case-1", "notes.txt"]


def test_the_report_the_morning_after_says_what_the_night_said(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A night's batch found its slide up to date; `wsi-segment report` rebuilt the page
    the morning after: still "up to date", not "done" (the batch's record of its night)."""
    import csv

    from wsi_segment.flows.cli import main

    out = tmp_path / "out"
    batch = ["batch", str(DATA / "small.svs"), "--out", str(out), "--model", str(tiny_model)]
    batch += ["--runtime", "torch", "--precision", "fp32", "--quiet"]
    assert main(batch) == 0  # the first night makes it
    assert main(batch) == 0  # the second finds it up to date
    capsys.readouterr()

    def statuses() -> list[str]:
        with open(out / "cohort.csv", encoding="utf-8", newline="") as f:
            return [row["status"] for row in csv.DictReader(f)]

    assert statuses() == ["up to date"]
    page = (out / "report.html").read_bytes()
    assert main(["report", str(out)]) == 0
    assert statuses() == ["up to date"] and (out / "report.html").read_bytes() == page
