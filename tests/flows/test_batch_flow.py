"""The batch flow for real: failures isolated, finished slides skipped, CLI exit codes."""

from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path

import pytest
from prefect.exceptions import TerminationSignal

from tests.flows.conftest import BROKEN, CLASSES, copy_slides, output_files, stable_summary
from tests.flows.dropped_on_log import stop_dropped_on_log
from wsi_segment.errors import OutputError
from wsi_segment.pipeline.batch_report import seconds_cell


def test_batch_isolates_a_broken_slide_and_resumes(
    prefect_harness: None,
    tiny_model: Path,
    slides_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from wsi_segment.flows.batch_flow import BatchFailedError, segment_batch
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    folder = copy_slides(slides_dir, tmp_path / "in", ["synth-a.tif", "synth-b.tif"])
    shutil.copy2(BROKEN, folder / "broken.svs")
    out = tmp_path / "out"
    kwargs = {"input": str(folder), "out": str(out), "model_dir": str(tiny_model), "workers": 0}
    # fp32: bytes are compared with a separate run below, and 'auto' times a precision
    # trial per loaded model (the tiny model's bf16 speed is near the threshold here);
    # torch: this is about orchestration, and the runtime choice has its own tests
    kwargs["options"] = {"precision": "fp32", "runtime": "torch"}

    # Prefect's run loggers may not propagate to the root logger (their dictConfig): listen
    # on the flow-run logger itself, whatever ran before in this process
    run_logger = logging.getLogger("prefect.flow_runs")
    run_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="prefect.flow_runs"):
            state = segment_batch(**kwargs, return_state=True)
    finally:
        run_logger.removeHandler(caplog.handler)
    assert state.is_failed()
    # the failure's log line names the slide once (its error already does)
    # (a set: where the run logger also propagates, the same record reaches the handler twice)
    [line] = {r.getMessage() for r in caplog.records if r.getMessage().startswith("failed: ")}
    assert line.count(str(folder / "broken.svs")) == 1 and "not a readable slide" in line
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
        "cohort.csv",
        "qupath-project",
        "report.html",
        "synth-a",
        "synth-b",
    ]

    _assert_batch_artifacts(state.state_details.flow_run_id, folder, out, by_name)
    _assert_morning_artifacts(state.state_details.flow_run_id, out)

    # identical to the plain pipeline call
    plain = segment_slide(
        folder / "synth-a.tif",
        tmp_path / "plain",
        SegmentParams(tiny_model, precision="fp32", runtime="torch"),
    )
    assert output_files(out / "synth-a") == output_files(plain.out_dir)
    assert stable_summary(out / "synth-a") == stable_summary(plain.out_dir)

    # a rerun skips the finished slides and reports the broken one, unchanged since it
    # failed, as a known failure without retrying it; both are decided before any task
    # starts: no slide gets a task, and the run is not Failed
    rerun = segment_batch(**kwargs, return_state=True)
    assert rerun.is_completed()
    again = rerun.result()
    statuses = {Path(r.slide).name: r.status for r in again}
    assert statuses == {
        "broken.svs": "known-failure",
        "synth-a.tif": "up-to-date",
        "synth-b.tif": "up-to-date",
    }
    assert all(r.seconds > 0 for r in again)  # the check's time, not 0.0
    assert _task_names(rerun.state_details.flow_run_id) == []
    # asked to retry it, the batch runs it (alone) and fails again
    retried = segment_batch(**kwargs, retry_failed=True, return_state=True)
    assert retried.is_failed()
    assert _task_names(retried.state_details.flow_run_id) == ["slide-broken"]


def _task_names(flow_run_id) -> list[str]:
    """The slide tasks (not their stage tasks) that a flow run started."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(r.name for r in runs if r.name.startswith("slide-"))


def _assert_batch_artifacts(flow_run_id, folder: Path, out: Path, by_name: dict) -> None:
    """The batch's table and markdown artifacts, read back from Prefect, match the outputs."""
    from prefect.artifacts import Artifact

    table = Artifact.get("segment-batch")
    assert table is not None and table.type == "table"
    assert table.flow_run_id == flow_run_id
    tally = "{'done': 2, 'up-to-date': 0, 'failed': 1}"
    assert table.description == f"{folder} -> {out}: {tally}"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    fractions = [f"{name} %" for name in (*CLASSES, "Unclassified")]
    columns = [
        "slide",
        "status",
        "output",
        "tissue_area_mm2",
        "tissue",
        *fractions,
        "seconds",
        "error",
    ]
    assert all(list(row) == columns for row in rows)
    rows_by_name = {Path(row["slide"]).name: row for row in rows}
    assert sorted(rows_by_name) == ["broken.svs", "synth-a.tif", "synth-b.tif"]
    assert (
        rows_by_name["synth-a.tif"]["tissue"] == "ok" and rows_by_name["broken.svs"]["tissue"] == ""
    )

    broken = rows_by_name["broken.svs"]
    assert broken["status"] == "failed (new)" and broken["output"] == ""
    assert broken["tissue_area_mm2"] is None
    assert all(broken[f] is None for f in fractions)
    assert broken["error"] == by_name["broken.svs"].error
    # the time it took to fail, not 0.0
    assert broken["seconds"] == seconds_cell(by_name["broken.svs"].seconds) > 0
    assert "not a readable slide" in broken["error"]

    for name in ("synth-a", "synth-b"):
        row = rows_by_name[f"{name}.tif"]
        summary = json.loads((out / name / "summary.json").read_text())
        assert row["status"] == "done" and row["error"] == ""
        assert row["output"] == str(out / name)
        assert row["tissue_area_mm2"] == round(summary["tissue"]["area_um2"] / 1e6, 4) > 0
        for cls in CLASSES:
            # the tables' units: mm² and % (report.html's), from the summary's um² and 0-1
            expected = round(100 * summary["classes"][cls]["fraction_of_tissue"], 1)
            assert row[f"{cls} %"] == expected
        assert row["seconds"] == seconds_cell(by_name[f"{name}.tif"].seconds) > 0

    report = Artifact.get("segment-batch-report")
    assert report is not None and report.type == "markdown"
    assert report.flow_run_id == flow_run_id
    assert report.data.startswith(f"### Batch {folder} -> {out}\n")
    assert "| " + " | ".join(columns) + " |" in report.data
    for name in ("synth-a", "synth-b"):
        assert f"| {folder / name}.tif | done | {out / name} |" in report.data
        # each slide's own markdown artifact links to its output folder
        outputs = Artifact.get(f"slide-{name}-outputs")
        assert outputs is not None and outputs.type == "markdown"
        assert outputs.flow_run_id == flow_run_id
        link = f"Outputs: [{out / name}]({(out / name).as_uri()})"
        assert link in outputs.data
    assert f"| {folder / 'broken.svs'} | failed (new) |  |" in report.data


def _assert_morning_artifacts(flow_run_id: object, out: Path) -> None:
    """The cohort table artifact is cohort.csv; the markdown one links the page (the report
    itself, as the batch loop writes it behind either door: tests/flows/test_batch_report.py)."""
    import csv

    from prefect.artifacts import Artifact

    table = Artifact.get("segment-batch-cohort")
    assert table is not None and table.flow_run_id == flow_run_id
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    as_text = [{k: "" if v is None else str(v) for k, v in row.items()} for row in data]
    with open(out / "cohort.csv", encoding="utf-8", newline="") as f:
        assert as_text == list(csv.DictReader(f))
    link = Artifact.get("segment-batch-morning-report")
    assert link is not None and link.flow_run_id == flow_run_id
    page = out / "report.html"
    assert f"[{page}]({page.as_uri()})" in link.data


def test_batch_from_manifest_with_names_and_mpp(
    prefect_harness: None, tiny_model: Path, slides_dir: Path, tmp_path: Path
) -> None:
    from prefect.artifacts import Artifact

    from wsi_segment.flows.batch_flow import segment_batch

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"slide,mpp,name\n{slides_dir / 'synth-a.tif'},2.0,case-7\n")
    # torch: the manifest's columns, not the runtime choice (its own tests); auto would pay
    # a cold OpenVINO export for this model
    results = segment_batch(
        input=str(manifest),
        out=str(tmp_path / "out"),
        model_dir=str(tiny_model),
        workers=0,
        options={"runtime": "torch"},
    )
    assert [r.status for r in results] == ["done"]
    assert results[0].out_dir == tmp_path / "out" / "case-7"
    assert results[0].summary["slide"]["mpp_override"] == 2.0
    table = Artifact.get("segment-batch")
    assert table is not None and table.type == "table"
    assert "case-7" in str(table.data)


def test_cli_batch_exit_codes(
    tiny_model: Path, slides_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The terminal's door (no Prefect API configured: the batch runs in this process,
    no server); the flow's failed and completed states: the tests above."""
    from wsi_segment.flows.cli import main
    from wsi_segment.flows.prefect_env import configured_api_url

    assert configured_api_url() is None

    folder = copy_slides(slides_dir, tmp_path / "in", ["synth-b.tif"])
    out = tmp_path / "out"
    base = ["batch", str(folder), "--out", str(out), "--model", str(tiny_model), "--workers", "0"]
    base += ["--runtime", "torch"]  # exit codes, not the runtime choice (its own tests)
    assert main(base) == 0
    assert "| done |" in capsys.readouterr().out
    shutil.copy2(BROKEN, folder / "broken.svs")
    assert main([*base, "--concurrency", "1"]) == 1  # a new failure
    captured = capsys.readouterr()
    assert "| up-to-date |" in captured.out and "| failed (new) |" in captured.out
    # the same broken slide again: a known failure, not retried: exit 0 and a warning line
    assert main(base) == 0
    captured = capsys.readouterr()
    assert "| failed (known, since " in captured.out
    [warning] = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert f"not retried: {folder / 'broken.svs'}: not a readable slide" in warning
    assert "--retry-failed" in warning
    assert "1 known-failure" in captured.err
    # asked to retry it: it runs and fails again (exit 1)
    assert main([*base, "--retry-failed"]) == 1
    assert "| failed (again, since " in capsys.readouterr().out
    # a bad manifest fails before Prefect starts: one error line, exit 1
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,name\nx.svs,../escape\n")
    assert main(["batch", str(bad), "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow  # the CLI's full disk is tests/reliability's
def test_batch_reports_a_full_disk_as_the_cli_does(
    prefect_harness: None, tiny_model: Path, slides_dir: Path, tmp_path: Path
) -> None:
    """A write error in a batch is the OutputError with its fix (as on the CLI), not an
    "internal error": both run `pipeline.segment.run_stages`. A 64 KiB file system holds the
    lock and partial folder but not the outputs."""
    from tests.conftest import tmpfs
    from wsi_segment.flows.batch_flow import BatchFailedError, segment_batch
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    slide = slides_dir / "synth-a.tif"
    with tmpfs(tmp_path / "full", "size=64k") as full:
        with pytest.raises(BatchFailedError) as failed:
            segment_batch(
                input=str(slide), out=str(full / "batch"), model_dir=str(tiny_model), workers=0
            )
        (result,) = failed.value.results
        assert result.status == "failed"
        assert "internal error" not in result.error
        assert "disk full" in result.error and "free space" in result.error
        with pytest.raises(OutputError) as cli:
            segment_slide(slide, full / "cli", SegmentParams(model_dir=tiny_model))
        assert result.error == str(cli.value).replace(str(full / "cli"), str(full / "batch"))


@pytest.mark.parametrize(
    "stop", [KeyboardInterrupt(), TerminationSignal(signal.SIGTERM)], ids=["ctrl-c", "sigterm"]
)
def test_a_stop_dropped_before_the_slides_start_stops_the_batch(
    prefect_harness: None, tiny_model: Path, slides_dir: Path, tmp_path: Path, stop
) -> None:
    """A stop Python drops while the flow reads its input (a deployment has no CLI guard
    around it) stops the batch before any slide starts, with the stop's own exception; the
    batch used to run every slide and end as if none had come."""
    from wsi_segment.flows.batch_flow import segment_batch

    out = tmp_path / "out"
    with (
        stop_dropped_on_log("prefect.flow_runs", " slide(s) from ", stop) as drop,
        pytest.raises(type(stop)),
    ):
        segment_batch(
            input=str(slides_dir),
            out=str(out),
            model_dir=str(tiny_model),
            workers=0,
            options={"precision": "fp32", "runtime": "torch"},
        )
    assert drop.fired
    assert not out.exists() or not [p.name for p in out.iterdir()]  # no slide started
