"""The single-slide flow runs for real (Prefect test server) and matches the plain pipeline."""

from __future__ import annotations

import errno
import json
import logging
import signal
from pathlib import Path

import pytest
from prefect.exceptions import TerminationSignal

from tests.flows.conftest import BROKEN, CMU, output_files, stable_summary
from tests.flows.dropped_on_log import stop_dropped_on_log
from wsi_segment.errors import SlideError


def test_is_transient_follows_the_cause_chain() -> None:
    from wsi_segment.flows.slide_flow import is_transient

    assert is_transient(OSError(errno.EIO, "I/O error"))
    assert is_transient(TimeoutError())
    wrapped = SlideError("cannot read region")
    wrapped.__cause__ = OSError(errno.ESTALE, "stale NFS file handle")
    assert is_transient(wrapped)
    assert not is_transient(SlideError("not a slide"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "missing"))
    assert not is_transient(None)


def test_artifact_keys_are_valid() -> None:
    from wsi_segment.flows.slide_flow import artifact_key

    assert artifact_key("CMU-1-Small_Region.v2") == "slide-cmu-1-small-region-v2"
    assert artifact_key("___") == "slide-unnamed"


@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow:FutureWarning")
def test_a_server_that_does_not_take_the_artifacts_costs_a_warning_not_the_slide(
    tmp_path: Path,
) -> None:
    """A server down for longer than Prefect's client retries once a slide's outputs were
    published: the ConnectError failed the slide, and its report called tonight's outputs
    an earlier run's. Here the server refuses at once (nothing listens, no retries)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from wsi_segment.flows.slide_flow import publish_or_warn
    from wsi_segment.pipeline.segment import SlideResult

    result = SlideResult(slide="a.svs", status="done", out_dir=tmp_path / "a")
    dead = {PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("wsi_segment.flows.slide_flow")
    logger.addHandler(handler)
    try:
        with temporary_settings(dead):
            publish_or_warn(result)
    finally:
        logger.removeHandler(handler)
    assert result.status == "done"
    [record] = records
    assert record.getMessage().startswith("a.svs: outputs written, but Prefect did not take")
    assert "ConnectError" in record.getMessage()


def test_slide_flow_on_cmu_matches_plain_pipeline(
    prefect_harness: None, tiny_model: Path, tmp_path: Path
) -> None:
    from prefect.artifacts import Artifact

    from wsi_segment.flows.slide_flow import segment_slide_flow as slide_flow
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    # fp32: two runs' bytes are compared, and 'auto' times a precision trial per loaded model;
    # torch: what runs the tiles is not what this compares (OpenVINO's compile per process)
    fp32 = {"precision": "fp32", "runtime": "torch"}
    plain = segment_slide(CMU, tmp_path / "plain", SegmentParams(model_dir=tiny_model, **fp32))
    assert plain.status == "done"
    flow = {"slide": str(CMU), "out": str(tmp_path / "flow"), "model_dir": str(tiny_model)}
    result = slide_flow(**flow, options=fp32)
    assert result.status == "done"
    assert result.out_dir == tmp_path / "flow" / "CMU-1-Small-Region"
    assert output_files(result.out_dir) == output_files(plain.out_dir)
    assert stable_summary(result.out_dir) == stable_summary(plain.out_dir) | {
        "slide": stable_summary(result.out_dir)["slide"]
    }
    table = Artifact.get("slide-cmu-1-small-region")
    assert table is not None and table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["class"] for r in rows] == ["TE", "NEC", "LYM", "TAS", "Unclassified"]
    assert str(result.out_dir) in (table.description or "")
    # a second run finds the outputs current and skips the work
    again = slide_flow(**flow, options=fp32)
    assert again.status == "up-to-date"


def test_transient_error_is_retried_and_broken_slide_is_not(
    prefect_harness: None,
    tiny_model: Path,
    slides_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wsi_segment.flows.slide_flow import segment_slide_flow as slide_flow
    from wsi_segment.pipeline import segment
    from wsi_segment.pipeline.cancellation import Cancellation
    from wsi_segment.pipeline.progress import NO_PROGRESS

    real_prepare = segment.prepare
    calls: list[str] = []
    failures = [OSError(errno.EIO, "Input/output error (network share)")]

    readers: list[dict] = []

    def flaky_prepare(slide_path, out_root, params, **early):
        calls.append(str(slide_path))
        readers.append(early)
        if failures:
            raise failures.pop()
        return real_prepare(slide_path, out_root, params, **early)

    monkeypatch.setattr(segment, "prepare", flaky_prepare)
    slide = slides_dir / "synth-a.tif"
    # torch at fp32: retries, not the runtime choice (its own tests); 'auto' pays OpenVINO's
    # export and a precision trial for this model
    fp32 = {"precision": "fp32", "runtime": "torch"}
    result = slide_flow(
        slide=str(slide), out=str(tmp_path), model_dir=str(tiny_model), options=fp32
    )
    assert result.status == "done" and len(calls) == 2
    # the flow prepares as the CLI does (`segment.prepare_stage`): on this CPU machine the
    # readers its policy names start while the model loads
    # (a single slide's flow: only a stop Python dropped cancels its token)
    cancel = readers[-1].pop("cancel")
    assert isinstance(cancel, Cancellation) and not cancel.cancelled
    local = {"early": True, "cluster": None, "at_once": 1}
    assert readers[-1] == {**local, "progress": NO_PROGRESS}  # no cluster
    assert result.summary["run_policy"]["read_source"] == "reader thread"

    calls.clear()
    with pytest.raises(SlideError, match=r"broken\.svs"):
        slide_flow(slide=str(BROKEN), out=str(tmp_path), model_dir=str(tiny_model), options=fp32)
    assert calls == [str(BROKEN)]  # deterministic failure: no retry
    assert not (tmp_path / "broken").exists()


def test_a_presigned_urls_failure_reaches_prefect_without_its_query(
    prefect_harness: None, tiny_model: Path, http_folder: tuple[Path, str], tmp_path: Path
) -> None:
    """A presigned URL the store does not have (an object removed, a signature expired)
    failed the stage with the URL whole in its message: in the task's and the flow's state
    and in the traceback Prefect logs, all kept on its server. They show the query removed;
    only the flow run's parameters keep what the run was given."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tests.flows.test_run_log import flow_run_logs
    from wsi_segment.flows.slide_flow import segment_slide_flow as slide_flow

    _, base = http_folder
    url = f"{base}/gone.svs?X-Amz-Credential=AKIAFAKEKEY&X-Amz-Signature=5ec2e7"
    state = slide_flow(
        slide=url, out=str(tmp_path / "out"), model_dir=str(tiny_model), return_state=True
    )
    flow_run_id = state.state_details.flow_run_id
    logs = [message for _, message in flow_run_logs(flow_run_id)]
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        tasks = client.read_task_runs(flow_run_filter=runs)
        given = client.read_flow_run(flow_run_id).parameters["slide"]
    shown = f"{base}/gone.svs?<query removed>: not a readable slide"
    messages = [state.message or "", *(t.state.message or "" for t in tasks if t.state)]
    assert state.is_failed() and shown in messages[0]
    assert [m for m in messages[1:] if shown in m]  # the stage that opens the slide
    assert [m for m in logs if shown in m]  # the traceback Prefect logged
    said = "\n".join([*messages, *logs])
    assert "AKIAFAKEKEY" not in said and "5ec2e7" not in said, said
    assert given == url  # Prefect's own record of what the run was given


@pytest.mark.parametrize(
    "stop", [KeyboardInterrupt(), TerminationSignal(signal.SIGTERM)], ids=["ctrl-c", "sigterm"]
)
def test_a_stop_dropped_while_the_slide_runs_stops_the_flow(
    prefect_harness: None, tiny_model: Path, tmp_path: Path, stop: BaseException
) -> None:
    """A stop Python drops in the flow's thread once the slide's first stage has ended (a
    signal landing in a finaliser: a deployment's cancel, a terminal's Ctrl-C) cancels the
    run, and the flow raises the stop itself, with nothing published; the run used to go
    on to its end as if none had come."""
    from wsi_segment.flows.slide_flow import segment_slide_flow as slide_flow

    out = tmp_path / "out"
    # the first stage's end, logged in the flow's thread
    with (
        stop_dropped_on_log("prefect.task_runs", "Finished in state", stop) as drop,
        pytest.raises(type(stop)),
    ):
        slide_flow(
            slide=str(CMU),
            out=str(out),
            model_dir=str(tiny_model),
            options={"precision": "fp32", "runtime": "torch"},
        )
    assert drop.fired
    # stopped at the next stage's start: only the first stage completed (inference never ran)
    ended = [m for m in drop.messages if "Finished in state" in m]  # each stage's end
    assert [m for m in ended if "Completed" in m] == [ended[0]], drop.messages
    assert not out.exists() or not [p.name for p in out.iterdir()]  # nothing published, no lock
