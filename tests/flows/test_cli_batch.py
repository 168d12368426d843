"""`wsi-segment batch`'s door (flows/cli_batch.py): what it says of the report files. The
batch itself is tested through the CLI in tests/flows/test_batch_*.py and tests/reliability."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.conftest import DATA
from tests.reliability.conftest import run_cli
from wsi_segment.flows.cli_batch import print_report_paths, report_stamps


def test_only_the_report_files_the_batch_rewrote_are_announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cohort.csv the batch could not replace (someone's own, or OUT read-only) was
    announced as `report: OUT/cohort.csv`, tonight's, though it showed an earlier run."""
    (tmp_path / "cohort.csv").write_text("my,own,table\n")  # left alone by the rebuild
    (tmp_path / "report.html").write_text("<html>last night</html>")
    before = report_stamps(tmp_path)
    rebuilt = tmp_path / ".report.html.tmp"  # as the rebuild writes: a new file, renamed
    rebuilt.write_text("<html>tonight</html>")
    rebuilt.replace(tmp_path / "report.html")
    print_report_paths(tmp_path, before)
    said = capsys.readouterr()
    assert said.out == f"report: {tmp_path / 'report.html'}\n"
    assert said.err == f"warning: {tmp_path / 'cohort.csv'} was not rewritten by this batch\n"
    # a batch whose OUT had no report before: both are new
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    before = report_stamps(fresh)
    for name in ("report.html", "cohort.csv"):
        (fresh / name).write_text("x")
    print_report_paths(fresh, before)
    assert capsys.readouterr().out.splitlines() == [
        f"report: {fresh / 'report.html'}",
        f"report: {fresh / 'cohort.csv'}",
    ]


def test_a_report_in_the_way_is_one_warning_and_the_batch_ends_quietly(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Someone's own cohort.csv in OUT: the slide is done, the file left as it was, and the
    batch says so in a warning. The rebuild after the slide warned from its thread, outside
    the CLI's Prefect server settings: Prefect started a server of its own and the batch
    ended with ~20 s of its ERROR lines, under --quiet too."""
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "cohort.csv"
    theirs.write_text("my,own,table\n")
    args = ["batch", DATA / "small.svs", "--model", tiny_model, "--out", out, "--quiet"]
    result = run_cli(args)
    assert result.code == 0, result.stderr[-3000:]
    assert "ERROR" not in result.stderr and "Error logging to API" not in result.stderr
    assert "temporary server" not in result.stderr, result.stderr[-3000:]
    assert f"report not written: {theirs} is in the way" in result.stderr
    assert f"warning: {theirs} was not rewritten by this batch" in result.stderr
    assert "report: " not in result.stdout
    assert theirs.read_text() == "my,own,table\n"
    assert (out / "small" / "summary.json").is_file()
