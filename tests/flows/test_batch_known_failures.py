"""One bad file must not turn every night red: the batch flow for real, run after run.

A broken slide fails the first run (flow Failed, its slide task Failed like its stage task,
an ERROR line, the record written); the next run with nothing changed does not touch it
(no task at all), ends Completed and says "failed (known, since ...)"; --retry-failed and a
touched slide run it again; a fixed slide clears the record; a file of someone else's at the
record's path is never replaced or removed (the loop's rule alone: run on the terminal's
door, `flows.terminal_batch`, which needs no Prefect server).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import without_report
from tests.flows.conftest import BROKEN, copy_slides
from wsi_segment.pipeline.batch_report import since_text


@contextmanager
def batch_log(
    caplog: pytest.LogCaptureFixture, name: str = "prefect.flow_runs"
) -> Iterator[list[logging.LogRecord]]:
    """The records of the batch's logger `name` (the flow run's, or the terminal's) while the
    block runs; on the logger itself: Prefect's run loggers may not propagate to the root
    logger, and the terminal's batch stops its lines' propagation while it prints them."""
    logger = logging.getLogger(name)
    logger.addHandler(caplog.handler)
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO, logger=name):
            yield caplog.records
    finally:
        logger.removeHandler(caplog.handler)


def lines(records: list[logging.LogRecord], level: int) -> set[str]:
    return {r.getMessage() for r in records if r.levelno == level}


def task_states(flow_run_id: Any) -> dict[str, str]:
    """The final state of every task a flow run started: slide tasks by name
    (`slide-<name>`), their stage tasks as `slide-<name>/<stage>`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    names = {r.id: r.name for r in runs}
    states = {}
    for r in runs:
        assert r.state is not None
        parents = [p.id for p in r.task_inputs.get("__parents__", [])]
        name = r.name if not parents else f"{names[parents[0]]}/{r.name.rsplit('-', 1)[0]}"
        states[name] = r.state.type.value
    return states


def table_status(slide: Path) -> str:
    """The status cell of `slide` in the latest batch table artifact."""
    from prefect.artifacts import Artifact

    table = Artifact.get("segment-batch")
    assert table is not None
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    [row] = [r for r in rows if r["slide"] == str(slide)]
    return str(row["status"])


def test_a_broken_slide_fails_once_then_is_known_until_changed_retried_or_fixed(
    prefect_harness: None,
    tiny_model: Path,
    slides_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from wsi_segment.flows.batch_flow import BatchFailedError, segment_batch

    folder = copy_slides(slides_dir, tmp_path / "in", ["synth-b.tif"])
    bad = folder / "broken.svs"
    shutil.copy2(BROKEN, bad)
    out = tmp_path / "out"
    record = out / ".broken.failed.json"
    kwargs: dict[str, Any] = {
        "input": str(folder),
        "out": str(out),
        "model_dir": str(tiny_model),
        "workers": 0,
        # torch: known failures, not the runtime choice (its own tests); 'auto' pays
        # OpenVINO's export for this model
        "options": {"precision": "fp32", "runtime": "torch"},
    }

    # 1. the first failure is new: flow Failed, ERROR line, slide task Failed, record written
    with batch_log(caplog) as records:
        first = segment_batch(**kwargs, return_state=True)
    assert first.is_failed()
    error = first.result(raise_on_failure=False)
    assert isinstance(error, BatchFailedError)
    by_name = {Path(r.slide).name: r for r in error.results}
    assert by_name["broken.svs"].status == "failed"
    assert by_name["synth-b.tif"].status == "done"
    message = by_name["broken.svs"].error
    assert message is not None and "not a readable slide" in message
    assert f"failed: {message}" in lines(records, logging.ERROR)
    # the slide's task ends as its stage task does (it used to show Completed)
    states = task_states(first.state_details.flow_run_id)
    assert states == {
        "slide-broken": "FAILED",
        "slide-broken/open-and-tissue": "FAILED",
        "slide-synth-b": "COMPLETED",
        "slide-synth-b/open-and-tissue": "COMPLETED",
        "slide-synth-b/inference": "COMPLETED",
        "slide-synth-b/polygons-and-outputs": "COMPLETED",
    }
    assert table_status(bad) == "failed (new)"
    data = json.loads(record.read_text())
    stat = bad.stat()
    assert data["slide"] == {"path": str(bad), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    assert data["error_class"] == "SlideError" and data["message"] == message
    assert data["run"]["flow_run_id"] == str(first.state_details.flow_run_id)
    assert data["since_utc"] == data["failed_utc"]
    since = data["since_utc"]

    # 2. nothing changed: not attempted (no task; the slide is not opened), run Completed,
    # reported as known in the results, the table and a WARNING line
    written = record.read_bytes()
    with batch_log(caplog) as records:
        second = segment_batch(**kwargs, return_state=True)
    assert second.is_completed()
    results = {Path(r.slide).name: r for r in second.result()}
    assert results["broken.svs"].status == "known-failure"
    assert results["broken.svs"].known_since == since
    assert results["broken.svs"].error == message
    assert results["synth-b.tif"].status == "up-to-date"
    assert task_states(second.state_details.flow_run_id) == {}
    assert table_status(bad) == f"failed (known, since {since_text(since)})"
    warning = (
        f"failed (known, since {since_text(since)}), not retried: {message}; to retry it "
        "unchanged, rerun with --retry-failed (flow parameter retry_failed)"
    )
    assert warning in lines(records, logging.WARNING)
    assert not lines(records, logging.ERROR)
    assert record.read_bytes() == written

    # 3. asked to retry: attempted again, fails again, the record keeps its date
    third = segment_batch(**kwargs, retry_failed=True, return_state=True)
    assert third.is_failed()
    assert task_states(third.state_details.flow_run_id) == {
        "slide-broken": "FAILED",
        "slide-broken/open-and-tissue": "FAILED",
    }
    assert table_status(bad) == f"failed (again, since {since_text(since)})"
    data = json.loads(record.read_text())
    assert data["since_utc"] == since
    assert data["run"]["flow_run_id"] == str(third.state_details.flow_run_id)

    # 4. the slide touched (same bytes, new mtime): a new failure, retried without asking
    os.utime(bad, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fourth = segment_batch(**kwargs, return_state=True)
    assert fourth.is_failed()
    assert "slide-broken" in task_states(fourth.state_details.flow_run_id)
    assert table_status(bad) == "failed (new)"
    data = json.loads(record.read_text())
    assert data["slide"]["mtime_ns"] == stat.st_mtime_ns + 10**9
    assert data["since_utc"] == data["failed_utc"]

    # 5. the slide replaced by a good one: it runs, succeeds, and its record is removed
    shutil.copyfile(slides_dir / "synth-a.tif", bad)
    fifth = segment_batch(**kwargs, return_state=True)
    assert fifth.is_completed()
    assert {Path(r.slide).name: r.status for r in fifth.result()}["broken.svs"] == "done"
    assert not record.exists()
    assert without_report(sorted(p.name for p in out.iterdir())) == ["broken", "synth-b"]


def test_a_file_at_the_records_path_that_is_not_ours_is_kept(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch loop's own rule, the same behind both doors: run through the terminal's
    (`flows.terminal_batch`, no Prefect server); the flow's tasks and run log: the test
    above."""
    from wsi_segment.flows.batch_loop import BATCH_LOGGER, BatchRequest
    from wsi_segment.flows.terminal_batch import run_terminal_batch
    from wsi_segment.pipeline.params import SegmentParams

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy2(BROKEN, folder / "case.svs")
    out = tmp_path / "out"
    out.mkdir()
    notes = out / ".case.failed.json"
    notes.write_text('{"my": "notes"}\n')
    request = BatchRequest(str(folder), str(out), SegmentParams(tiny_model), workers=0)
    for _ in range(2):  # not recorded, so never known: each run tries the slide and fails
        with batch_log(caplog, BATCH_LOGGER) as records:
            [result] = run_terminal_batch(request, quiet=True)
        # tried (a known failure would be "known-failure", with its date), and failed
        assert result.status == "failed" and result.known_since is None
        assert result.error is not None and "not a readable slide" in result.error
        why = "it is not a failure record wsi-segment wrote"
        assert f"failure not recorded: {notes} is in the way ({why}); left as it is" in lines(
            records, logging.WARNING
        )
        assert notes.read_text() == '{"my": "notes"}\n'
    assert without_report(sorted(p.name for p in out.iterdir())) == [notes.name]
