"""The nightly deployment on a live server and process worker, with the worker alone SIGKILLed
mid-run (as the OOM killer picks one process, or a worker run by hand, under tmux or a
supervisor without cgroups, dies): the flow-run process survives it, as Prefect means it to,
with its stdout and stderr pipes to the dead worker. It must finish its night: the run ends
Completed with every slide done, and no process of the run is left once it has.

A SIGTERM to such an orphaned run (what systemd sends what is left of the worker's unit) then
stops it as it stops any run: Crashed, its slides in flight cleaned up, no process left.

Without `flows.worker_pipes`, the first line Prefect's console handler printed after the kill
raised `SystemExit` (rich's broken-pipe handling) in the thread that logged: in the Dask
client's event-loop thread, every slide after it failed with "IOLoop is closed" and the
process waited at exit for its Dask worker process for ever; or a slide waited for ever on
bands whose results the dead loop would never deliver.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.flows.conftest import CMU, deploy_nightly, run_nightly, start_worker
from tests.flows.test_deploy_server import (
    Processes,
    api,
    processes,  # noqa: F401
    start_server,
    unit_env,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # each test: a live server and worker

NAMES = ["case-1", "case-2", "case-3"]
FINISH_S = 480  # from the kill to Completed: three small slides on a loaded 2-core machine
EXIT_S = 60  # from the run's end to its last process gone
STOP_S = 120  # from SIGTERM to Crashed: the slides in flight stop and clean up


def run_processes(flow_pid: int, seen: set[int]) -> list[psutil.Process]:
    """The flow-run process's processes alive now: those of its session (Prefect starts the
    run as a session leader) and its descendants, with every pid in `seen` (gathered while
    the run ran, so that a child orphaned since is still found)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == flow_pid or proc.pid in seen:
                found[proc.pid] = proc
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def remember(flow: psutil.Process, seen: set[int]) -> None:
    """Add the flow-run process's descendants alive now to `seen`."""
    with contextlib.suppress(psutil.NoSuchProcess):
        seen.update(p.pid for p in flow.children(recursive=True))


@dataclass
class OrphanedRun:
    """A nightly run whose worker was SIGKILLed while a slide was being written."""

    url: str
    flow_run_id: str
    out: Path
    flow: psutil.Process  # the flow-run process
    seen: set[int] = field(default_factory=set)  # every process it started, while it ran

    def state(self) -> str:
        return str(api(self.url, "GET", f"/flow_runs/{self.flow_run_id}")["state_type"])

    def ended(self) -> bool:
        remember(self.flow, self.seen)
        return self.state() in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

    def wait_until_gone(self, processes: Processes) -> None:  # noqa: F811
        """Wait until no process of the run is left (within EXIT_S of its end)."""

        def gone() -> bool:
            return not run_processes(self.flow.pid, self.seen)

        wait_for("the run's processes to end", gone, EXIT_S, processes, "server")

    def left_behind(self) -> list[str]:
        """Hidden folders and files a slide in flight leaves in the output folder."""
        return [p.name for p in self.out.iterdir() if p.name.endswith((".partial", ".lock"))]


@pytest.fixture
def orphan(
    tmp_path: Path,
    processes: Processes,  # noqa: F811
    tiny_model: Path,
) -> Iterator[OrphanedRun]:
    """The recipe's server and worker, the `nightly` deployment over NAMES (copies of the CMU
    slide, a local Dask cluster, one slide at a time), and the worker's process alone
    SIGKILLed once a slide is being written; at exit every process of the run is killed,
    whatever happened."""
    env = unit_env(tmp_path, PREFECT_WORKER_QUERY_SECONDS="2")
    url = start_server(env, processes)
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in NAMES:
        (slides / f"{name}.svs").write_bytes(CMU.read_bytes())
    out = tmp_path / "outputs"
    deploy_nightly(env, slides, out, tiny_model, "concurrency=1")
    worker = start_worker(env, processes)
    flow_run_id = run_nightly(env)
    wait_for("a slide being written", lambda: any(out.glob(".*.partial")), 600, processes, "worker")
    [flow] = [p for p in psutil.Process(worker.pid).children() if "prefect.engine" in p.cmdline()]
    orphan = OrphanedRun(url, flow_run_id, out, flow)
    try:
        remember(flow, orphan.seen)
        os.kill(worker.pid, signal.SIGKILL)  # the worker alone: its flow run lives on
        worker.wait(timeout=30)
        assert flow.is_running() and orphan.state() == "RUNNING"
        yield orphan
    finally:  # nothing of the run outlives the test
        for proc in run_processes(flow.pid, orphan.seen):
            proc.kill()


def test_a_run_whose_worker_is_killed_alone_finishes_its_night(
    orphan: OrphanedRun,
    processes: Processes,  # noqa: F811
) -> None:
    killed_at = time.monotonic()
    wait_for("the run to end", orphan.ended, FINISH_S, processes, "server")
    assert time.monotonic() - killed_at < FINISH_S
    url, flow_run_id = orphan.url, orphan.flow_run_id
    assert orphan.state() == "COMPLETED", api(url, "GET", f"/flow_runs/{flow_run_id}")["state"]
    artifacts = api(
        url,
        "POST",
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
    )
    [table] = [a for a in artifacts if a["key"] == "segment-batch"]
    rows = table["data"] if isinstance(table["data"], list) else json.loads(table["data"])
    assert {Path(r["slide"]).stem: r["status"] for r in rows} == dict.fromkeys(NAMES, "done")
    for name in NAMES:
        assert (orphan.out / name / "summary.json").is_file()
    assert not orphan.left_behind()
    orphan.wait_until_gone(processes)


def test_sigterm_stops_a_run_whose_worker_is_gone_as_any_run(
    orphan: OrphanedRun,
    processes: Processes,  # noqa: F811
) -> None:
    def next_slide_in_flight() -> bool:  # lines were printed since the kill
        done = [p for p in orphan.out.iterdir() if p.name in NAMES]
        return bool(done) and any(orphan.out.glob(".*.partial"))

    wait_for("the next slide in flight", next_slide_in_flight, FINISH_S, processes, "server")
    orphan.flow.send_signal(signal.SIGTERM)
    wait_for("the run to end", orphan.ended, STOP_S, processes, "server")
    state = api(orphan.url, "GET", f"/flow_runs/{orphan.flow_run_id}")["state"]
    assert state["type"] == "CRASHED", state
    assert state["message"] == "Execution was aborted by a termination signal.", state
    orphan.wait_until_gone(processes)
    assert not orphan.left_behind()  # its slide in flight cleaned up
