"""An error that will recur is not retried at any level of a batch: a slide with a damaged
tile is read, and its damaged chunk computed, once.

A real batch flow (Prefect test server) sends its chunks to a real Dask cluster with worker
processes; the slide is the CMU slide with one level-0 JPEG tile overwritten by noise, with
tissue detection off (`tissue="all"`) so that the damage is met in inference, on a worker.
Counted where each level keeps its own record: Prefect's task runs (and their run counts),
the Dask scheduler's transitions, and the slide reader's retry warnings.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, corrupt_middle_tile, without_report


def _times_processing(prefix: str, dask_scheduler=None) -> dict[str, int]:
    """How often the scheduler sent each task whose key starts with `prefix` to a worker."""
    counts: dict[str, int] = {}
    for entry in dask_scheduler.transition_log:
        key, finish = str(entry[0]), entry[2]
        if key.startswith(prefix) and finish == "processing":
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow  # a cluster of its own
def test_a_damaged_chunk_is_computed_once(
    prefect_harness: None, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from wsi_segment.flows.batch_flow import BatchFailedError, segment_batch
    from wsi_segment.flows.dask_cluster import dask_client

    damaged = tmp_path / "in" / "damaged.svs"
    damaged.parent.mkdir()
    corrupt_middle_tile(CMU_SLIDE, damaged)
    out = tmp_path / "out"
    # torch: retries, not the runtime choice (auto on a cluster is test_dask.py's)
    options = {"tissue": "all", "precision": "fp32", "mpp": 0.5, "runtime": "torch"}
    with dask_client(workers=1, threads=1) as client, caplog.at_level(logging.WARNING):
        state = segment_batch(
            input=str(damaged.parent),
            out=str(out),
            model_dir=str(tiny_model),
            dask_address=client.scheduler.address,
            options=options,
            return_state=True,
        )
        chunk_starts = client.run_on_scheduler(_times_processing, "band-")
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BatchFailedError)
    [result] = error.results
    assert result.status == "failed" and "damaged.svs" in result.error
    assert "Corrupt JPEG data" in result.error  # met in inference, on the worker
    # Dask: every band sent to a worker once (the damaged one's included: no Dask retry)
    assert chunk_starts and max(chunk_starts.values()) == 1, chunk_starts
    # Prefect: each stage task ran once, in one attempt (no task retry)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    names = sorted(re.sub(r"-[0-9a-f]{3}$", "", r.name) for r in runs)
    assert names == ["inference", "open-and-tissue", "slide-damaged"], names
    assert [r.run_count for r in runs] == [1, 1, 1]
    # the slide reader: no retry of the damaged read in this process (the workers log theirs
    # to their own stderr; their retry would have shown as a second chunk start above)
    assert not [r for r in caplog.records if "attempt 2 of" in r.getMessage()]
    # no partial folder, no lock: only the failure record (pipeline.known_failures)
    assert without_report(sorted(p.name for p in out.iterdir())) == [".damaged.failed.json"]
