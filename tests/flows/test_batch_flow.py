"""The batch flow for real: failures isolated, finished slides skipped, CLI exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.flows.conftest import BROKEN, copy_slides, output_files, stable_summary


def test_batch_isolates_a_broken_slide_and_resumes(
    prefect_harness: None, tiny_model: Path, slides_dir: Path, tmp_path: Path
) -> None:
    from flows.batch_flow import BatchFailedError, segment_batch
    from pipeline.params import SegmentParams
    from pipeline.segment import segment_slide

    folder = copy_slides(slides_dir, tmp_path / "in", ["synth-a.tif", "synth-b.tif"])
    shutil.copy2(BROKEN, folder / "broken.svs")
    out = tmp_path / "out"
    kwargs = {"input": str(folder), "out": str(out), "model_dir": str(tiny_model), "workers": 0}

    state = segment_batch(**kwargs, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BatchFailedError)
    by_name = {Path(r.slide).name: r for r in error.results}
    assert [by_name[n].status for n in ("broken.svs", "synth-a.tif", "synth-b.tif")] == [
        "failed",
        "done",
        "done",
    ]
    assert "broken.svs" in by_name["broken.svs"].error
    assert "not a readable slide" in by_name["broken.svs"].error
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "synth-a",
        "synth-b",
    ]

    # identical to the plain pipeline call
    plain = segment_slide(folder / "synth-a.tif", tmp_path / "plain", SegmentParams(tiny_model))
    assert output_files(out / "synth-a") == output_files(plain.out_dir)
    assert stable_summary(out / "synth-a") == stable_summary(plain.out_dir)

    # a rerun skips the finished slides and still reports the broken one
    with pytest.raises(BatchFailedError) as again:
        segment_batch(**kwargs)
    statuses = {Path(r.slide).name: r.status for r in again.value.results}
    assert statuses == {
        "broken.svs": "failed",
        "synth-a.tif": "up-to-date",
        "synth-b.tif": "up-to-date",
    }


def test_batch_from_manifest_with_names_and_mpp(
    prefect_harness: None, tiny_model: Path, slides_dir: Path, tmp_path: Path
) -> None:
    from prefect.artifacts import Artifact

    from flows.batch_flow import segment_batch

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide,mpp,name\n{slides_dir / 'synth-a.tif'},2.0,case-7\n")
    results = segment_batch(
        input=str(manifest), out=str(tmp_path / "out"), model_dir=str(tiny_model), workers=0
    )
    assert [r.status for r in results] == ["done"]
    assert results[0].out_dir == tmp_path / "out" / "case-7"
    assert results[0].summary["slide"]["mpp_override"] == 2.0
    table = Artifact.get("segment-batch")
    assert table is not None and table.type == "table"
    assert "case-7" in str(table.data)


def test_cli_batch_exit_codes(
    prefect_harness: None,
    tiny_model: Path,
    slides_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.cli import main

    folder = copy_slides(slides_dir, tmp_path / "in", ["synth-b.tif"])
    out = tmp_path / "out"
    base = ["batch", str(folder), "--out", str(out), "--model", str(tiny_model), "--workers", "0"]
    assert main(base) == 0
    assert "| done |" in capsys.readouterr().out
    shutil.copy2(BROKEN, folder / "broken.svs")
    assert main([*base, "--concurrency", "1"]) == 1
    captured = capsys.readouterr()
    assert "up-to-date" in captured.out and "failed" in captured.out
    # a bad manifest fails before Prefect starts: one error line, exit 1
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,name\nx.svs,../escape\n")
    assert main(["batch", str(bad), "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
