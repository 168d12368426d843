"""The nightly batch deployed as a lab deploys it without Docker, for real.

deploy/systemd's server and worker commands with the environment of deploy/systemd/prefect.env
(its paths and port overridden: PREFECT_HOME in tmp_path, a free loopback port), the work
pool, `prefect deploy` of the shipped deploy/prefect.yaml with its folders given by `--param`
(as README says), one triggered run; then its outputs, artifacts, logs and state are read
back from the server's REST API. Every process started here is ended here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.flows.conftest import copy_slides, deploy_nightly, run_nightly, start_worker
from tests.wsi.test_tissue import write_slide

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
INSTALLED = "/opt/wsi-segment/.venv/bin/"  # where the units expect the project's virtualenv
BIN = Path(sys.executable).parent
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a systemd EnvironmentFile (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def unit_commands(unit: Path, key: str) -> list[list[str]]:
    """The `key=` command lines of a unit, with this virtualenv in place of the installed one."""
    commands = []
    for line in unit.read_text().splitlines():
        if line.startswith(f"{key}="):
            argv = shlex.split(line.split("=", 1)[1].lstrip("-"))
            assert argv[0].startswith(INSTALLED), argv
            commands.append([str(BIN / argv[0].removeprefix(INSTALLED)), *argv[1:]])
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Long-running commands of one test, each in its own process group, all ended at exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def api(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    response = httpx.request(method, f"{url}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def wait_for(what: str, check: Any, timeout: float, procs: Processes, log: str) -> Any:
    """Poll `check()` until it returns something truthy; fail with the log of `log` if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # the server is not up yet
            value = None
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what} not within {timeout} s; {log} log:\n{procs.log(log)[-4000:]}")


def run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def unit_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment the systemd units give their commands (prefect.env), on a free port of
    loopback, with PREFECT_HOME and TMPDIR (the units' CacheDirectory=) in `tmp_path`. The
    database is SQLite in PREFECT_HOME unless `extra` names one: the recipe's PostgreSQL is
    the machine's, which a test stands up for itself (tests/postgres_server.py)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(env_file(SYSTEMD / "prefect.env"))
    del env["PREFECT_API_DATABASE_CONNECTION_URL"]
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        TMPDIR=str(tmp_path),
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_UI_ENABLED="false",  # the UI's static files cost start-up time
        **extra,
    )
    return env


def start_server(env: dict[str, str], processes: Processes, timeout: float = 180) -> str:
    """The server unit's ExecStartPre (the database) and ExecStart, as systemd runs them;
    returns the API url once it answers."""
    url = env["PREFECT_API_URL"]
    server_unit = SYSTEMD / "prefect-server.service"
    for argv in unit_commands(server_unit, "ExecStartPre"):
        run(argv, env)
    [server] = unit_commands(server_unit, "ExecStart")
    processes.start("server", server, env)
    wait_for("server health", lambda: api(url, "GET", "/health"), timeout, processes, "server")
    return url


def test_nightly_deployment_runs_on_a_live_server_and_worker(
    tmp_path: Path, processes: Processes, tiny_model: Path, slides_dir: Path
) -> None:
    # test speed: the worker polls more often
    env = unit_env(tmp_path, PREFECT_WORKER_QUERY_SECONDS="2")
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    url = start_server(env, processes, 120)
    assert (tmp_path / "prefect-home" / "prefect.db").is_file()  # made by ExecStartPre

    slides = copy_slides(slides_dir, tmp_path / "slides", ["synth-a.tif"])
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(236, 3, (512, 640, 3)), 0, 255).astype(np.uint8)
    write_slide(slides / "blank.tif", glass, mpp=2.0)
    out = tmp_path / "outputs"
    deploy_nightly(env, slides, out, tiny_model)
    deployment = api(url, "GET", "/deployments/name/segment-batch/nightly")
    assert deployment["parameters"]["input"] == str(slides)
    assert deployment["parameters"]["dask_address"] is None
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]

    start_worker(env, processes)
    flow_run_id = run_nightly(env)

    def finished() -> dict[str, Any] | None:
        flow_run = api(url, "GET", f"/flow_runs/{flow_run_id}")
        return flow_run if flow_run["state_type"] in TERMINAL else None

    flow_run = wait_for("the flow run", finished, 420, processes, "worker")
    assert flow_run["state_type"] == "COMPLETED", processes.log("worker")[-4000:]

    # outputs, as a batch writes them
    for name in ("synth-a", "blank"):
        folder = out / name
        assert {"summary.json", "tissue.geojson", "overlay.png", "probabilities.ome.zarr"} <= {
            p.name for p in folder.iterdir()
        }
    # artifacts: the batch table and report, one row per slide
    artifacts = api(
        url, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    )
    by_key = {a["key"]: a for a in artifacts if a["key"]}
    table = by_key["segment-batch"]
    assert table["type"] == "table"
    rows = (
        table["data"]
        if isinstance(table["data"], list)
        else __import__("json").loads(table["data"])
    )
    assert sorted((Path(r["slide"]).name, r["status"]) for r in rows) == [
        ("blank.tif", "done"),
        ("synth-a.tif", "done"),
    ]
    assert by_key["segment-batch-report"]["type"] == "markdown"
    assert "synth-a" in by_key["segment-batch-report"]["data"]

    # the CLI's warning is a WARNING line of the run on the server, naming the deployment's
    # parameters where the CLI names its options
    logs = api(url, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
    warnings = [log["message"] for log in logs if log["level"] == 30]
    assert [w for w in warnings if "no tissue found" in w] == [
        f"{slides / 'blank.tif'}: no tissue found, so the outputs are empty; check the slide, "
        "or pass `options.tissue=all` to process the whole slide, or `options.roi=FILE.geojson` "
        "for a region"
    ]
    # summary.json says how to repeat the run: the deployment, with the run's parameters
    summary = json.loads((out / "synth-a" / "summary.json").read_text())
    command = shlex.split(summary["command"])
    assert command[:5] == ["prefect", "deployment", "run", "segment-batch/nightly", "--params"]
    assert json.loads(command[5])["input"] == str(slides)
    assert summary["run"]["flow_run_id"] == flow_run_id

    # the live server turns the cron into scheduled runs at 02:00 UTC
    def scheduled() -> list[Any]:
        body = {
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        }
        return api(url, "POST", "/flow_runs/filter", body)

    runs = wait_for("scheduled runs", scheduled, 120, processes, "server")
    assert all("T02:00:00" in run["expected_start_time"] for run in runs)
