"""The systemd recipe of docs/deploy.md, run as written under real systemd.

A machine booted with systemd (tests/systemd_machine.py: its own namespaces over a
copy-on-write view of this one), the project checked out at /opt/wsi-segment with its
virtualenv, slides in /data/slides. The docs' commands run as they are (as root, so without
`sudo`; `sudoedit` is skipped: the shipped WSI_SEGMENT_OUTPUTS is /data/outputs): the service
user, the units installed and enabled, the pool, `prefect deploy`, a run. The worker is then
restarted with `systemctl restart` while a slide is half-written: the run must end in a final
state and leave nothing behind, and the next run must finish the night.
"""

from __future__ import annotations

import json
import re
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import without_report
from tests.flows.conftest import write_synthetic_slide
from tests.systemd_machine import SystemdMachine, boot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = "/opt/wsi-segment"  # where the units expect the project
API = "http://127.0.0.1:4200/api"  # deploy/systemd/prefect.env
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SLIDES = ["a", "b", "c"]


def recipe() -> str:
    """The shell lines of docs/deploy.md's systemd recipe, as a root shell runs them."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## A server and a worker without Docker", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+# .*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("sudoedit ", "journalctl ")):  # an editor; a follow that never ends
            continue
        lines.append(line.removeprefix("sudo ").replace("|| sudo ", "|| "))
    return "\n".join(lines)


def launcher() -> bytes:
    """The checkout's `.venv/bin/prefect`, run by this interpreter (this checkout's venv may
    reuse another's scripts, whose first line names that one's interpreter)."""
    script = (Path(sys.executable).parent / "prefect").read_text().splitlines()[1:]
    return "\n".join([f"#!{sys.executable}", *script, ""]).encode()


def closed_to_others(path: Path) -> list[Path]:
    """The folders on `path`'s way (links resolved) that other users cannot enter, and the
    file itself where they cannot run it: what keeps a service user from running it."""
    real = path.resolve()
    closed = [f for f in reversed(real.parents) if not f.stat().st_mode & stat.S_IXOTH]
    return closed + ([] if real.stat().st_mode & stat.S_IXOTH else [real])


def open_the_interpreter(machine: SystemdMachine) -> None:
    """The venv's interpreter must be one the service user can run (docs/deploy.md: else both
    units fail at exec, "bad interpreter: Permission denied"). This checkout's may not be (a
    pyenv Python in /root, 0700): the machine opens the folders on its way to others, in its
    copy-on-write overlay only, as an admin would make the venv from a system Python."""
    for path in closed_to_others(Path(sys.executable)):
        machine.sh(f"chmod o+x {path}")


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[SystemdMachine]:
    slides = tmp_path / "slides"
    slides.mkdir()
    files = {f"{CHECKOUT}/.venv/bin/prefect": launcher()}  # bound over the checkout's
    for seed, name in enumerate(SLIDES, start=1):
        path = write_synthetic_slide(slides / f"{name}.tif", (1024, 768), seed=seed)
        files[f"/data/slides/{name}.tif"] = path.read_bytes()
    booted = boot(tmp_path / "machine", files, {str(REPO): CHECKOUT})
    open_the_interpreter(booted)
    try:
        yield booted
    finally:
        booted.sh("systemctl disable --now prefect-worker prefect-server", check=False)
        booted.shutdown()


def api(machine: SystemdMachine, path: str, body: dict[str, Any] | None = None) -> Any:
    post = ["-X", "POST", "-H", "content-type: application/json", "-d", json.dumps(body)]
    args = " ".join(f"'{a}'" for a in post) if body is not None else ""
    return json.loads(machine.sh(f"curl -sf {args} {API}{path}", timeout=60).stdout)


def run_state(machine: SystemdMachine, flow_run: str) -> dict[str, Any]:
    return api(machine, f"/flow_runs/{flow_run}")  # type: ignore[no-any-return]


def wait_final(machine: SystemdMachine, flow_run: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = run_state(machine, flow_run)
        if state["state_type"] in FINAL:
            return state
        time.sleep(2)
    journal = machine.sh("journalctl -u prefect-worker --no-pager | tail -40").stdout
    pytest.fail(f"flow run {flow_run} not final within {timeout} s:\n{journal}")


def table(machine: SystemdMachine, flow_run: str) -> dict[str, str]:
    """The batch table artifact of a run: slide file name -> status."""
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run]}, "key": {"any_": ["segment-batch"]}}}
    [artifact] = api(machine, "/artifacts/filter", body)
    data = artifact["data"]
    rows = data if isinstance(data, list) else json.loads(data)
    return {Path(row["slide"]).name: row["status"] for row in rows}


def test_the_systemd_recipe_as_written_and_a_worker_restart_mid_run(
    machine: SystemdMachine,
) -> None:
    # the docs' commands, from the checkout with its virtualenv active
    done = machine.sh(
        f"set -e\ncd {CHECKOUT}\n. .venv/bin/activate\n{recipe()}", timeout=600, check=False
    )
    journals = "journalctl -u prefect-server -u prefect-worker --no-pager | tail -60"
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{machine.sh(journals).stdout}"
    assert machine.sh("systemctl is-active prefect-server prefect-worker").stdout.split() == [
        "active",
        "active",
    ]
    server_log = machine.sh("journalctl -u prefect-server --no-pager").stdout
    assert "UI will not be available" not in server_log
    [first] = UUID.findall(done.stdout.split("Created flow run", 1)[1])[:1]
    deployment = api(machine, "/deployments/name/segment-batch/nightly")
    assert deployment["parameters"]["input"] == "/data/slides"
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": CHECKOUT}}
    ]

    # the worker unit made the output folder for the service user and the lab's group
    outputs = machine.path("/data/outputs")
    assert machine.sh("stat -c '%U %G %a' /data/outputs").stdout.split() == ["wsi", "wsi", "2775"]

    # restart the worker while a slide is half-written
    deadline = time.monotonic() + 300
    while not any(p.name.endswith(".partial") for p in outputs.iterdir()):
        assert time.monotonic() < deadline, machine.sh("journalctl -u prefect-worker").stdout
        assert run_state(machine, first)["state_type"] not in FINAL
        time.sleep(0.3)
    started = time.monotonic()
    machine.sh("systemctl restart prefect-worker", timeout=200)
    restart_s = time.monotonic() - started
    # the run ended while the unit stopped: Crashed, with its slides' partial outputs removed
    state = run_state(machine, first)
    assert (state["state_type"], state["state"]["message"]) == (
        "CRASHED",
        "Execution was aborted by a termination signal.",
    ), restart_s
    assert restart_s < 120
    left = without_report(sorted(p.name for p in outputs.iterdir()))
    finished = [name for name in left if not name.startswith(".")]
    assert left == finished, left  # no .partial, no .lock
    assert all((outputs / name / "summary.json").is_file() for name in finished)
    assert machine.sh("systemctl is-active prefect-worker").stdout.strip() == "active"
    journal = machine.sh("journalctl -u prefect-worker --no-pager").stdout
    assert "Finished in state Crashed('Execution was aborted by a termination signal.')" in journal

    # the next run does what is missing and the night is complete
    rerun = machine.sh(
        f"cd {CHECKOUT} && export PREFECT_API_URL={API} && "
        ".venv/bin/prefect deployment run 'segment-batch/nightly'"
    )
    [second] = UUID.findall(rerun.stdout)[:1]
    assert wait_final(machine, second, 1200)["state_type"] == "COMPLETED"
    assert table(machine, second) == {
        f"{name}.tif": ("up-to-date" if name in finished else "done") for name in SLIDES
    }
    assert without_report(sorted(p.name for p in outputs.iterdir())) == SLIDES
    owners = machine.sh("stat -c '%U %G' /data/outputs/*/summary.json").stdout.splitlines()
    assert set(owners) == {"wsi wsi"}
