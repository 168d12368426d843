"""In a deployment's flow run, advice names the flow's parameters (the manifest's `mpp`
column, `options.tissue=all`), not CLI options nobody can pass there; a run from the CLI
keeps the CLI's words. A real deployment on the test server, run in-process as a worker
runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.flows.test_run_log import flow_run_logs
from tests.wsi.test_tissue import write_slide


def test_deployment_advice_names_flow_parameters(
    prefect_harness: None, tiny_model: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from wsi_segment.flows.batch_flow import segment_batch

    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (512, 640, 3)), 0, 255).astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    no_mpp = write_slide(folder / "a-no-mpp.tif", glass, mpp=None)
    blank = write_slide(folder / "b-blank.tif", glass, mpp=2.0)
    parameters = {
        "input": str(folder),
        "out": str(tmp_path / "out"),
        "model_dir": str(tiny_model),
        "workers": 0,
    }
    deployment_id = segment_batch.to_deployment("words-test", parameters=parameters).apply()
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    state = run_flow(
        segment_batch, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
    )
    assert state.is_failed()
    messages = [message for _, message in flow_run_logs(flow_run.id)]
    failed = [m for m in messages if m.startswith("failed: ")]
    assert failed == [
        f"failed: {no_mpp}: the slide does not record its pixel size (microns per pixel); "
        "pass it with the "
        "manifest's `mpp` column (or `options.mpp` for every slide) (e.g. `options.mpp=0.25` "
        "for 40x, 0.5 for 20x)"
    ]
    assert [m for m in messages if "no tissue found" in m] == [
        f"{blank}: no tissue found, so the outputs are empty; check the slide, or pass "
        "`options.tissue=all` to process the whole slide, or `options.roi=FILE.geojson` for a "
        "region"
    ]
    assert not [m for m in messages if " --" in m], messages


def test_outside_a_deployment_the_cli_words_stay(prefect_harness: None) -> None:
    from prefect import flow

    from wsi_segment.flows.door_words import run_words

    message = "pass --tissue all to process the whole slide"

    @flow
    def words() -> str:
        return run_words(message)

    assert run_words(message) == message  # no flow run at all
    assert words() == message  # a flow called in-process, as `wsi-segment batch` calls it
