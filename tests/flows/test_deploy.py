"""deploy/: prefect.yaml builds its deployment offline; compose and Dockerfile say what they must."""

from __future__ import annotations

import os
import py_compile
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def test_prefect_yaml_builds_both_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's own prefect.yaml model validates the file; each deployment builds with no server."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    raw = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    assert [d.name for d in model.deployments] == ["nightly", "nightly-compose"]
    monkeypatch.chdir(REPO)  # entrypoints are relative to the project root
    for config in model.deployments:
        assert config.work_pool is not None and config.work_pool.name == "wsi-segment"
        assert [s.cron for s in config.schedules] == ["0 2 * * *"]
        assert {"input", "out", "model_dir", "dask_address"} <= set(config.parameters)
        flow = load_flow_from_entrypoint(config.entrypoint)
        assert flow.name == "segment-batch"
        deployment = flow.to_deployment(
            config.name,
            cron=config.schedules[0].cron,
            parameters=config.parameters,
            work_pool_name=config.work_pool.name,
            tags=config.tags,
            concurrency_limit=config.concurrency_limit,
        )
        assert deployment.schedules[0].schedule.cron == "0 2 * * *"
        assert deployment.parameters == config.parameters
        # every parameter in the file is one the flow takes
        assert set(config.parameters) <= set(deployment._parameter_openapi_schema.properties)


def test_local_deployment_needs_neither_docker_nor_dask() -> None:
    """`nightly` runs where it is deployed from: no pull step into the image's folder (so
    `prefect deploy` records its own folder), no scheduler address, no container paths."""
    raw = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    local, compose = raw["deployments"]
    assert raw["pull"] is None and "pull" not in local
    assert local["parameters"]["dask_address"] is None
    assert not any(str(v).startswith("/data/") for v in local["parameters"].values())
    # the compose one names the stack's services and the image's folder
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    host, port = compose["parameters"]["dask_address"].removeprefix("tls://").split(":")
    assert host in services and f"--port {port}" in services[host]["command"]
    [step] = compose["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert f"WORKDIR {directory}" in (DEPLOY / "Dockerfile").read_text()
    for name in ("input", "out"):
        assert compose["parameters"][name].startswith("/data/")
    # one deployment per machine: the docs deploy by name, never both with --all
    for path in (REPO / "README.md", REPO / "docs" / "deploy.md", DEPLOY / "docker-compose.yml"):
        text = path.read_text()
        assert "deploy/prefect.yaml --all" not in text, path
        assert "--name nightly" in text, path


def test_compose_worker_and_docs_name_the_server_service() -> None:
    """The worker's PREFECT_API_URL (and the one docs/deploy.md gives for the stack) reach
    the compose service that runs the server."""
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    url = services["prefect-worker"]["environment"]["PREFECT_API_URL"]
    host = re.match(r"http://([^:/]+):4200/api$", url).group(1)
    assert host == "prefect-server" and "prefect server start" in services[host]["command"]
    docs = (REPO / "docs" / "deploy.md").read_text()
    for found in re.findall(r"PREFECT_API_URL=http://([^:/]+):", docs):
        assert found in services or found in ("127.0.0.1", "localhost"), found


def test_docker_compose_has_the_services() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "prefect-server",
        "prefect-worker",
        "dask-scheduler",
        "dask-worker-gpu0",
        "dask-worker-gpu1",
    } <= set(services)
    assert (
        "postgresql+asyncpg://"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    assert services["prefect-worker"]["environment"]["PREFECT_API_URL"].endswith("/api")
    # the server runs our image (pyproject's fastapi/sqlalchemy pins), not prefecthq/prefect
    server = services["prefect-server"]
    assert server["image"] == services["prefect-worker"]["image"] == "wsi-segment:latest"
    assert server["build"]["dockerfile"] == "deploy/Dockerfile"
    assert server["command"].startswith("prefect server start")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r'pip install "\.(\[[a-z,]+\])?"', dockerfile)  # the project, deps pinned
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert {"fastapi<0.151", "sqlalchemy<2.1"} <= set(pyproject["project"]["dependencies"])
    for name in ("dask-worker-gpu0", "dask-worker-gpu1"):
        worker = services[name]
        assert "tls://dask-scheduler:8786" in worker["command"]
        assert "--tls-ca-file /etc/dask-tls/ca.pem" in worker["command"]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        # bands start decoder processes: the worker is not daemonic, /dev/shm holds the ring
        assert worker["environment"]["DASK_DISTRIBUTED__WORKER__DAEMON"] == "False"
        assert "--resources GPU=1" in worker["command"] and worker["shm_size"] == "2gb"
    # slides and outputs at the same paths wherever a slide is read or written
    mounts = {re.search(r"}:(/[^:]+)", v).group(1) for v in services["prefect-worker"]["volumes"]}
    assert {"/data/slides", "/data/outputs"} <= mounts
    assert services["dask-worker-gpu0"]["volumes"] == services["prefect-worker"]["volumes"]
    # what listens is published on the host's loopback only, and the scheduler speaks TLS
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    assert "--protocol tls" in services["dask-scheduler"]["command"]
    tls = services["prefect-worker"]["environment"]["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]
    assert tls == "/etc/dask-tls/ca.pem"


def test_dockerfile_is_cuda_pytorch_and_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "pytorch/pytorch:" in text and "cuda" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_the_image_context_holds_only_what_the_dockerfile_copies() -> None:
    """The compose build's context is the repository root: without a .dockerignore the lab's
    Dask TLS key (deploy/dask-tls/, the documented DASK_TLS_DIR) was copied into the image
    with deploy/, and .venv (gigabytes) sent as context. Docker: the last matching line wins."""
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**"  # everything out, then back in by name
    copied = re.findall(r"^COPY (.+) \S+$", (DEPLOY / "Dockerfile").read_text(), re.M)
    sources = [src for line in copied for src in line.split()]
    for src in sources:
        kept = f"!{src}/" if (REPO / src).is_dir() else f"!{src}"
        assert kept in lines, src
    assert lines.index("deploy/dask-tls/") > lines.index("!deploy/")  # out again, after


def _slurm_example() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "slurm_example", DEPLOY / "slurm_dask_jobqueue.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slurm_example_compiles_and_builds_a_job_script() -> None:
    path = DEPLOY / "slurm_dask_jobqueue.py"
    py_compile.compile(str(path), doraise=True)
    module = _slurm_example()
    script = module.job_script(cores=4, memory="16GiB", gpus=1, walltime="02:00:00")
    assert "#SBATCH" in script and "--gres=gpu:1" in script
    assert os.fspath("distributed.cli.dask_worker") in script or "dask worker" in script
    assert "export DASK_DISTRIBUTED__WORKER__DAEMON=False" in script


def test_slurm_example_passes_the_batch_options_the_cli_has() -> None:
    """A nightly SLURM batch can retry known failures and bound a stuck slide like
    `wsi-segment batch`: its request to the batch loop carries them, and its chunks go to the
    SLURM cluster, started only once a slide is to run (a scheduler to start, no address);
    a time limit the CLI refuses it refuses too."""
    from wsi_segment.errors import ConfigError

    module = _slurm_example()
    args = module.parse_args(["/s", "--out", "/o", "--retry-failed", "--slide-timeout", "600"])
    request = module.batch_request(args, {})
    assert request.retry_failed is True and request.slide_timeout == 600.0
    assert (request.input, request.out) == ("/s", "/o")
    assert request.dask_address is None and request.scheduler is not None
    defaults = module.batch_request(module.parse_args(["/s", "--out", "/o"]), {})
    assert defaults.retry_failed is False and defaults.slide_timeout is None
    with pytest.raises(ConfigError, match="slide_timeout must be > 0"):
        module.batch_request(module.parse_args(["/s", "--out", "/o", "--slide-timeout", "0"]), {})


def _failed_run_event(state: str, deployment: str) -> Any:
    """The event Prefect's server emits when a deployment's flow run enters `state`, with
    its related resources built by the server's own code."""
    from uuid import uuid4

    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.server.models.events import _resource_data_as_related_resources

    related = _resource_data_as_related_resources(
        {
            "flow": {"id": str(uuid4()), "name": "segment-batch", "tags": [], "role": "flow"},
            "deployment": {
                "id": str(uuid4()),
                "name": deployment,
                "tags": ["wsi-segment", "nightly"],
                "role": "deployment",
            },
        }
    )
    return ReceivedEvent(
        occurred=datetime.now(UTC),
        event=f"prefect.flow-run.{state}",
        resource={"prefect.resource.id": f"prefect.flow-run.{uuid4()}"},
        related=related,
        id=uuid4(),
    )


def test_failure_automation_validates_and_fires_only_for_an_unfinished_nightly_run() -> None:
    """deploy/automation-nightly-failed.yaml is what `prefect automation create --from-file`
    accepts once its block id is filled in (refused before), and its trigger covers a run of
    the `nightly` deployment that did not finish (Failed, Crashed, Cancelled, TimedOut) and
    nothing else (the server's own trigger model)."""
    from uuid import uuid4

    from prefect.events.schemas.automations import AutomationCore
    from prefect.server.events.schemas.automations import EventTrigger
    from pydantic import ValidationError

    raw = yaml.safe_load((DEPLOY / "automation-nightly-failed.yaml").read_text())
    with pytest.raises(ValidationError):  # the <BLOCK_ID> placeholder must be replaced
        AutomationCore.model_validate(raw)
    raw["actions"][0]["block_document_id"] = str(uuid4())
    automation = AutomationCore.model_validate(raw)
    assert automation.enabled and automation.actions[0].type == "send-notification"
    names = [
        d["name"] for d in yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["deployments"]
    ]
    assert raw["trigger"]["match_related"]["prefect.resource.name"] in names
    trigger = EventTrigger.model_validate(raw["trigger"])
    for state in ("Failed", "Crashed", "Cancelled", "TimedOut"):
        assert trigger.covers(_failed_run_event(state, "nightly")), state
        assert not trigger.covers(_failed_run_event(state, "weekly")), state
    for state in ("Completed", "Running", "Pending", "Scheduled", "Cancelling", "Retrying"):
        assert not trigger.covers(_failed_run_event(state, "nightly")), state


def test_zombie_automation_validates_and_crashes_runs_whose_heartbeats_stop() -> None:
    """deploy/automation-zombie-crashed.yaml is an automation Prefect accepts as it is: a
    proactive trigger per flow run, armed by a heartbeat and satisfied by the next heartbeat
    or any final state, that sets the run Crashed (tested live in test_deploy_alerts.py)."""
    from prefect.events.schemas.automations import AutomationCore, Posture

    raw = yaml.safe_load((DEPLOY / "automation-zombie-crashed.yaml").read_text())
    automation = AutomationCore.model_validate(raw)
    trigger = automation.trigger
    assert trigger.posture == Posture.Proactive
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    finals = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    assert trigger.expect >= {"prefect.flow-run.heartbeat", *finals}
    assert trigger.for_each == {"prefect.resource.id"}
    # several heartbeats (the frequency the units set) before a run counts as gone
    frequency = int(
        (DEPLOY / "systemd" / "prefect.env")
        .read_text()
        .split("PREFECT_FLOWS_HEARTBEAT_FREQUENCY=")[1]
        .split()[0]
    )
    assert trigger.within.total_seconds() >= 3 * frequency
    [action] = automation.actions
    assert action.type == "change-flow-run-state" and action.state.value == "CRASHED"
