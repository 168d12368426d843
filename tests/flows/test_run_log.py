"""A flow run's logs say what the CLI prints: each warning at WARNING on the run logger (and so
on the server), the pipeline's own logging warnings included, each once."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.flows.conftest import copy_slides
from tests.wsi.test_tissue import write_slide

REPO = Path(__file__).resolve().parents[2]


def flow_run_logs(flow_run_id: object) -> list[tuple[int, str]]:
    """(level, message) of every log line the server holds for a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [(log.level, log.message) for log in logs]


@pytest.fixture(scope="module")
def blank_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (512, 640, 3)), 0, 255).astype(np.uint8)
    return write_slide(tmp_path_factory.mktemp("blank") / "blank.tif", glass, mpp=2.0)


def test_batch_logs_the_cli_warnings_at_warning(
    prefect_harness: None,
    tiny_model: Path,
    slides_dir: Path,
    blank_slide: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from wsi_segment.flows.batch_flow import segment_batch
    from wsi_segment.flows.cli import main
    from wsi_segment.pipeline.run_warnings import slide_warnings

    folder = copy_slides(slides_dir, tmp_path / "in", ["synth-a.tif"])
    copy_slides(blank_slide.parent, folder, [blank_slide.name])
    kwargs = {"input": str(folder), "model_dir": str(tiny_model), "workers": 0}
    state = segment_batch(**kwargs, out=str(tmp_path / "flow"), return_state=True)
    results = state.result()
    [expected] = [w for r in results for w in slide_warnings(r)]
    assert expected.startswith(f"{folder / 'blank.tif'}: no tissue found")
    logged = flow_run_logs(state.state_details.flow_run_id)
    assert [m for level, m in logged if level == logging.WARNING] == [expected]

    # the CLI prints the same words, once
    assert main(["batch", str(folder), "--out", str(tmp_path / "cli"), "--workers", "0",
                 "--model", str(tiny_model)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        f"warning: {expected}"
    ]


def test_pipeline_logging_warnings_reach_the_run_log_once(
    prefect_harness: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A warning the pipeline logs with `logging` (tissue detection on a slide without mpp),
    from a thread of the flow's process, is a WARNING line of the flow run; the handler is
    gone after the flow."""
    from prefect import flow

    from wsi_segment.flows.run_log import PIPELINE_LOGGER, pipeline_warnings_to_run_log
    from wsi_segment.wsi.slide import open_slide
    from wsi_segment.wsi.tissue import detect_tissue

    image = np.full((256, 320, 3), 240, np.uint8)
    image[64:192, 64:256] = (150, 60, 140)
    no_mpp = write_slide(tmp_path / "no-mpp.tif", image, mpp=None)

    def detect() -> None:
        with open_slide(no_mpp) as slide:
            detect_tissue(slide)

    @flow(name="pipeline-warning")
    def run_detection() -> None:
        with pipeline_warnings_to_run_log():
            thread = threading.Thread(target=detect)
            thread.start()
            thread.join()

    with caplog.at_level(logging.WARNING):
        state = run_detection(return_state=True)
    expected = f"{no_mpp}: no mpp; tissue min area/hole use pixel defaults"
    logged = flow_run_logs(state.state_details.flow_run_id)
    assert [m for level, m in logged if level == logging.WARNING] == [expected]
    # once in this process's log output too: through the run logger, not also through root
    assert [r.name for r in caplog.records if r.getMessage() == expected] == ["prefect.flow_runs"]
    pipeline = logging.getLogger(PIPELINE_LOGGER)
    assert pipeline.propagate and not pipeline.handlers
