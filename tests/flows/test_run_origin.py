"""summary.json says how to repeat a flow run: a deployment's name, the flow run id and its
parameters (in a deployed run, `sys.argv` is Prefect's engine); in-process, with a real
deployment on the test server."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from tests.flows.conftest import copy_slides

# torch at fp32: how a run is recorded, not the runtime choice (its own tests); 'auto' pays
# OpenVINO's export and a precision trial for the tiny model
FP32 = {"precision": "fp32", "runtime": "torch"}


def test_deployed_run_records_deployment_run_and_parameters(
    prefect_harness: None, tiny_model: Path, slides_dir: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from wsi_segment.flows.batch_flow import segment_batch

    folder = copy_slides(slides_dir, tmp_path / "in", ["synth-b.tif"])
    parameters = {
        "input": str(folder),
        "out": str(tmp_path / "out"),
        "model_dir": str(tiny_model),
        "workers": 0,
        "options": FP32,
    }
    deployment_id = segment_batch.to_deployment("nightly-test", parameters=parameters).apply()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    [result] = run_flow(segment_batch, flow_run=flow_run, parameters=flow_run.parameters)

    summary = json.loads((result.out_dir / "summary.json").read_text())
    command = shlex.split(summary["command"])  # one line a shell runs as it is
    assert command[:5] == ["prefect", "deployment", "run", "segment-batch/nightly-test", "--params"]
    assert len(command) == 6
    # every parameter the run had, its defaults too, so a later default cannot change a repeat
    repeat = json.loads(command[5])
    assert flow_run.parameters.items() <= repeat.items()
    assert set(repeat) == set(segment_batch.parameters.properties)
    assert repeat == summary["run"]["parameters"]
    assert summary["run"]["flow_run_id"] == str(flow_run.id)
    assert summary["run"]["deployment"] == "segment-batch/nightly-test"
    assert summary["run"]["parameters"]["input"] == str(folder)
    # how a run started is not how it segments: never a parameter, never in the fingerprint
    assert "origin" not in summary["parameters"]


def test_flow_called_in_process_keeps_its_command_line(
    prefect_harness: None, tiny_model: Path, slides_dir: Path, tmp_path: Path
) -> None:
    from wsi_segment.flows.slide_flow import segment_slide_flow

    state = segment_slide_flow(
        slide=str(slides_dir / "synth-a.tif"),
        out=str(tmp_path),
        model_dir=str(tiny_model),
        options={"decoders": 0, **FP32},
        return_state=True,
    )
    result = state.result()
    summary = json.loads((result.out_dir / "summary.json").read_text())
    argv = shlex.split(summary["command"])  # pytest's: its script, or `python -m pytest ...`
    assert argv in (sys.argv, [sys.executable, *sys.orig_argv[1:]])
    assert summary["run"]["flow_run_id"] == str(state.state_details.flow_run_id)
    assert summary["run"]["deployment"] is None
    assert summary["run"]["flow"] == "segment-slide"
    assert summary["run"]["parameters"]["slide"] == str(slides_dir / "synth-a.tif")


def test_a_deployed_runs_presigned_url_is_recorded_without_its_query(
    prefect_harness: None, tiny_model: Path, http_folder: tuple[Path, str], tmp_path: Path
) -> None:
    """A deployment's `slide` parameter, a presigned URL, was written whole into summary.json
    twice: in `command` (`--params` JSON) and in `run.parameters`. The run reads the whole
    URL; what it writes down shows its query removed."""
    import shutil

    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from tests.conftest import CMU_SLIDE
    from wsi_segment.flows.slide_flow import segment_slide_flow

    served, base = http_folder
    shutil.copy(CMU_SLIDE, served / "CMU-1-Small-Region.svs")
    url = f"{base}/CMU-1-Small-Region.svs?X-Amz-Credential=AKIAFAKEKEY&X-Amz-Signature=5ec2e7"
    parameters = {"slide": url, "out": str(tmp_path / "out"), "model_dir": str(tiny_model)}
    parameters["options"] = FP32
    deployment_id = segment_slide_flow.to_deployment("presigned", parameters=parameters).apply()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    result = run_flow(segment_slide_flow, flow_run=flow_run, parameters=flow_run.parameters)

    text = (result.out_dir / "summary.json").read_text()
    assert "AKIAFAKEKEY" not in text and "5ec2e7" not in text
    summary = json.loads(text)
    shown = f"{base}/CMU-1-Small-Region.svs?<query removed>"
    assert summary["run"]["parameters"]["slide"] == shown
    assert json.loads(shlex.split(summary["command"])[5])["slide"] == shown
    assert summary["slide"]["path"] == shown
