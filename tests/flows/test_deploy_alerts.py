"""The shipped automations, for real, on a live Prefect server (the systemd unit's commands),
created with `prefect automation create --from-file`:

- deploy/automation-nightly-failed.yaml, with a notification block that posts to a webhook
  this test serves: runs of the `nightly` deployment that end Failed, Crashed, Cancelled,
  TimedOut get one notification each; Completed, or another deployment's, none;
- deploy/automation-zombie-crashed.yaml (its `within` cut to 15 s, the test's only change): a
  run whose heartbeats stop, as when its worker is restarted or killed, is set Crashed, which
  the first automation then reports; a run whose heartbeats end in Completed is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tests.conftest import MORNING_REPORT, without_report
from tests.flows.conftest import deploy_nightly, run_nightly, start_worker
from tests.flows.test_deploy_server import (
    BIN,
    REPO,
    SYSTEMD,
    Processes,
    env_file,
    processes,  # noqa: F401
    run,
    start_server,
    unit_env,
    wait_for,
)
from tests.flows.test_deploy_server import api as server_api
from tests.postgres_server import postgres_database

pytestmark = pytest.mark.slow

AUTOMATION = REPO / "deploy" / "automation-nightly-failed.yaml"
ZOMBIES = REPO / "deploy" / "automation-zombie-crashed.yaml"
# (state type, state name) of each way a run ends
ENDS = {
    "Failed": ("FAILED", "Failed"),
    "Crashed": ("CRASHED", "Crashed"),
    "Cancelled": ("CANCELLED", "Cancelled"),
    "TimedOut": ("FAILED", "TimedOut"),
    "Completed": ("COMPLETED", "Completed"),
}


def api(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The server's REST API; a 503 (SQLite busy on a loaded machine) is asked again."""
    import httpx

    for attempt in range(5):
        try:
            return server_api(url, method, path, body)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503 or attempt == 4:
                raise
            time.sleep(2)
    return None


class Hook:
    """An HTTP endpoint on loopback that keeps the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                posts.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def create_alert(hook: Hook, env: dict[str, str], folder: Path) -> None:
    """deploy/automation-nightly-failed.yaml as its comments say, with a notification block
    that posts to `hook` in place of Slack's."""
    make_block = (
        "from prefect.blocks.notifications import CustomWebhookNotificationBlock as B\n"
        f"b = B(name='wsi-test', url={hook.url!r}, allow_private_urls=True,\n"
        "      json_data={'subject': '{{subject}}', 'body': '{{body}}'})\n"
        "print(b.save('wsi-segment-alerts'))\n"
    )
    block_id = run([str(BIN / "python"), "-c", make_block], env).strip().splitlines()[-1]
    automation = folder / "automation.yaml"
    automation.write_text(AUTOMATION.read_text().replace("<BLOCK_ID>", block_id))
    run([str(BIN / "prefect"), "automation", "create", "--from-file", str(automation)], env)


def heartbeat(url: str, flow_run: dict[str, Any]) -> None:
    """The event a flow run's engine sends every PREFECT_FLOWS_HEARTBEAT_FREQUENCY s."""
    event = {
        "occurred": datetime.now(UTC).isoformat(),
        "event": "prefect.flow-run.heartbeat",
        "resource": {
            "prefect.resource.id": f"prefect.flow-run.{flow_run['id']}",
            "prefect.resource.name": flow_run["name"],
        },
        "related": [],
        "id": str(uuid4()),
    }
    import httpx

    httpx.post(f"{url}/events", json=[event], timeout=30).raise_for_status()


def start_run(url: str, deployment_id: str) -> dict[str, Any]:
    flow_run = api(url, "POST", f"/deployments/{deployment_id}/create_flow_run", {})
    path = f"/flow_runs/{flow_run['id']}/set_state"
    api(url, "POST", path, {"state": {"type": "RUNNING", "name": "Running"}, "force": True})
    return dict(flow_run)


def end_run(url: str, deployment_id: str, end: str) -> dict[str, Any]:
    """A flow run of the deployment, Running, then ended as `end` (as the worker, the
    server's cancellation or a crash handler would set it)."""
    flow_run = api(url, "POST", f"/deployments/{deployment_id}/create_flow_run", {})
    path = f"/flow_runs/{flow_run['id']}/set_state"
    api(url, "POST", path, {"state": {"type": "RUNNING", "name": "Running"}, "force": True})
    state_type, name = ENDS[end]
    state = {"type": state_type, "name": name, "message": f"ended {end} in the test"}
    api(url, "POST", path, {"state": state, "force": True})
    return flow_run


def test_the_shipped_automation_alerts_on_every_night_that_did_not_finish(
    tmp_path: Path,
    processes: Processes,  # noqa: F811
) -> None:
    env = unit_env(tmp_path)
    url = start_server(env, processes)

    hook = Hook()
    try:
        create_alert(hook, env, tmp_path)
        zombies = tmp_path / "zombies.yaml"
        zombies.write_text(ZOMBIES.read_text().replace("within: 300", "within: 15"))
        assert zombies.read_text() != ZOMBIES.read_text()
        run([str(BIN / "prefect"), "automation", "create", "--from-file", str(zombies)], env)

        flow = api(url, "POST", "/flows/", {"name": "segment-batch"})
        deployments = {
            name: api(url, "POST", "/deployments/", {"name": name, "flow_id": flow["id"]})["id"]
            for name in ("nightly", "weekly")
        }
        zombie = start_run(url, deployments["nightly"])  # its worker dies after a heartbeat
        heartbeat(url, zombie)
        healthy = start_run(url, deployments["nightly"])
        heartbeat(url, healthy)
        alerting = ("Failed", "Crashed", "Cancelled", "TimedOut")
        runs = {end: end_run(url, deployments["nightly"], end) for end in alerting}
        end_run(url, deployments["nightly"], "Completed")
        end_run(url, deployments["weekly"], "Crashed")
        done = {"state": {"type": "COMPLETED", "name": "Completed"}, "force": True}
        api(url, "POST", f"/flow_runs/{healthy['id']}/set_state", done)

        def crashed() -> bool:
            return bool(api(url, "GET", f"/flow_runs/{zombie['id']}")["state_type"] == "CRASHED")

        wait_for("the zombie run Crashed", crashed, 180, processes, "server")
        state = api(url, "GET", f"/flow_runs/{zombie['id']}")["state"]
        assert state["message"].startswith("No heartbeat for 5 minutes: the worker")
        assert api(url, "GET", f"/flow_runs/{healthy['id']}")["state_type"] == "COMPLETED"
        wait_for("5 notifications", lambda: len(hook.posts) >= 5, 180, processes, "server")
        time.sleep(10)  # the quiet runs ended before the zombie crashed: give them their chance
        subjects = sorted(post["subject"] for post in hook.posts)
        expected = [f"wsi-segment: nightly batch {runs[e]['name']} {ENDS[e][1]}" for e in alerting]
        expected.append(f"wsi-segment: nightly batch {zombie['name']} Crashed")
        assert subjects == sorted(expected)
        for post in hook.posts:
            state = post["subject"].rsplit(" ", 1)[1]
            assert f"ended {state}:\n" in post["body"] and "docs/deploy.md" in post["body"]
    finally:
        hook.close()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as the OOM killer or a machine
    going down would (nothing gets to clean up or report)."""
    import psutil

    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_a_worker_killed_mid_run_ends_crashed_and_the_next_run_does_only_what_is_missing(
    tmp_path: Path,
    processes: Processes,  # noqa: F811
    tiny_model: Path,
) -> None:
    """The nightly deployment on a live server and process worker; the worker's whole process
    tree SIGKILLed while a slide is being written. The run ends Crashed within the zombie
    automation's bound (heartbeats every 30 s, `within` cut to 75 s), and the next run takes
    over the stale lock, removes the partial folder and runs only the unfinished slides."""
    from tests.flows.conftest import write_synthetic_slide

    env = unit_env(
        tmp_path,
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",  # Prefect's minimum: a shorter test
    )
    url = start_server(env, processes)
    zombies = tmp_path / "zombies.yaml"
    zombies.write_text(ZOMBIES.read_text().replace("within: 300", "within: 75"))
    run([str(BIN / "prefect"), "automation", "create", "--from-file", str(zombies)], env)

    slides = tmp_path / "slides"
    slides.mkdir()
    names = [f"s{i}" for i in range(6)]
    for i, name in enumerate(names):
        write_synthetic_slide(slides / f"{name}.tif", (3072, 2048), seed=10 + i)
    out = tmp_path / "outputs"
    deploy_nightly(env, slides, out, tiny_model, "workers=0", "concurrency=1")

    def state_of(flow_run_id: str) -> str:
        return str(api(url, "GET", f"/flow_runs/{flow_run_id}")["state_type"])

    worker = start_worker(env, processes)
    first = run_nightly(env)
    partial = wait_for(
        "a slide being written",
        lambda: next(iter(out.glob(".*.partial")), None),
        600,
        processes,
        "worker",
    )
    kill_tree(worker.pid)
    killed_at = time.monotonic()
    finished = {p.name for p in out.iterdir() if not p.name.startswith(".")} - set(MORNING_REPORT)
    assert partial.name.removeprefix(".").removesuffix(".partial") not in finished
    assert len(finished) < len(names)
    assert state_of(first) == "RUNNING"

    wait_for("the run Crashed", lambda: state_of(first) == "CRASHED", 300, processes, "server")
    # bounded: the last heartbeat (<= 30 s before the kill) + within (75 s) + evaluation
    assert time.monotonic() - killed_at < 200
    message = api(url, "GET", f"/flow_runs/{first}")["state"]["message"]
    assert message.startswith("No heartbeat for 5 minutes"), message  # the automation's
    assert any(out.glob(".*.partial")) or any(out.glob(".*.lock"))

    start_worker(env, processes, "worker-again")
    second = run_nightly(env)
    wait_for(
        "the next run",
        lambda: state_of(second) in ("COMPLETED", "FAILED", "CRASHED"),
        600,
        processes,
        "worker-again",
    )
    assert state_of(second) == "COMPLETED", processes.log("worker-again")[-4000:]
    # nothing hidden left beside the batch's report
    assert without_report(sorted(p.name for p in out.iterdir())) == names
    artifacts = api(
        url, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [second]}}}
    )
    [table] = [a for a in artifacts if a["key"] == "segment-batch"]
    rows = table["data"] if isinstance(table["data"], list) else json.loads(table["data"])
    statuses = {Path(r["slide"]).stem: r["status"] for r in rows}
    assert statuses == {n: "up-to-date" if n in finished else "done" for n in names}


def test_one_failed_night_sends_one_alert_on_postgresql_with_the_machine_loaded(
    tmp_path: Path,
    processes: Processes,  # noqa: F811
    tiny_model: Path,
) -> None:
    """The recipe's server on PostgreSQL (prefect.env's database, here a cluster of the test's
    own), its worker and the shipped alert; every core busy with other processes while three
    nightly runs fail one after the other. Each failed night is one post, no more: on SQLite
    under such load a locked write made the triggers consumer run the action again."""
    shipped = env_file(SYSTEMD / "prefect.env")["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert shipped.startswith("postgresql+asyncpg://wsi@/prefect?host=")
    with postgres_database() as database:
        env = unit_env(
            tmp_path, PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_API_DATABASE_CONNECTION_URL=database
        )
        url = start_server(env, processes)
        assert not (tmp_path / "prefect-home" / "prefect.db").exists()  # not SQLite
        hook = Hook()
        try:
            create_alert(hook, env, tmp_path)
            deploy_nightly(env, tmp_path / "no-slides-here", tmp_path / "outputs", tiny_model)
            busy = [sys.executable, "-c", "while True: pass"]
            for i in range(2 * (os.cpu_count() or 1)):
                processes.start(f"load-{i}", busy, env)
            start_worker(env, processes)
            runs = [run_nightly(env) for _ in range(3)]

            def failed() -> bool:
                states = [api(url, "GET", f"/flow_runs/{r}")["state_type"] for r in runs]
                return states == ["FAILED"] * 3

            wait_for("three failed runs", failed, 420, processes, "worker")
            wait_for("three alerts", lambda: len(hook.posts) >= 3, 180, processes, "server")
            time.sleep(30)  # an action fired again would post within this
            names = [api(url, "GET", f"/flow_runs/{r}")["name"] for r in runs]
            assert sorted(post["subject"] for post in hook.posts) == sorted(
                f"wsi-segment: nightly batch {name} Failed" for name in names
            )
            assert "database is locked" not in processes.log("server")
        finally:
            hook.close()
            processes.stop()  # the server, before its database goes
