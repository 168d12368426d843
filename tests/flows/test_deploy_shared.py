"""The systemd recipe on a machine a lab shares, with real users: the worker unit makes the
output folder the service user owns and the lab's group shares; a member's trial batch and
the service user's nightly batch then read each other's known-failure records."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.conftest import BROKEN
from tests.flows.test_deploy_server import env_file
from tests.lab_users import LabUsers, lab_users  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
VARIABLE = re.compile(r"\$\{(\w+)\}")


def unit_lines(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(key)]


def privileged_commands(unit: Path, env: dict[str, str], user: str, group: str) -> list[str]:
    """The unit's `ExecStartPre=+...` lines (run as root), with ${VAR} from `env` and the
    unit's User= and Group= (which they name as `-o USER -g GROUP`) replaced by `user` and
    `group`, as for a unit edited to run as them."""
    [unit_user] = unit_lines(unit, "User=")
    [unit_group] = unit_lines(unit, "Group=")
    commands = []
    for line in unit_lines(unit, "ExecStartPre="):
        if line.startswith("+"):
            # systemd's %u and %g are the manager's user (root), not User=: never in these
            assert "%u" not in line and "%g" not in line, line
            owner = f"-o {unit_user} -g {unit_group} "
            assert owner in line, line
            line = line[1:].replace(owner, f"-o {user} -g {group} ")
            commands.append(VARIABLE.sub(lambda m: env[m.group(1)], line))
    return commands


def test_the_units_give_the_service_user_its_own_temp_and_output_folders(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    env = env_file(SYSTEMD / "prefect.env")
    # TMPDIR is a folder systemd makes for the service user (CacheDirectory=), in both units
    for unit in ("prefect-server.service", "prefect-worker.service"):
        [cache] = unit_lines(SYSTEMD / unit, "CacheDirectory=")
        assert env["TMPDIR"] in {f"/var/cache/{d}" for d in cache.split()}, unit
    assert env["PREFECT_HOME"].startswith("/var/lib/")  # StateDirectory=, never /tmp

    (lab_users.root / "data").mkdir(mode=0o755)  # root's, like /data
    outputs = lab_users.root / "data" / "outputs"
    env["WSI_SEGMENT_OUTPUTS"] = str(outputs)
    worker = SYSTEMD / "prefect-worker.service"
    [make] = privileged_commands(worker, env, lab_users.service, lab_users.group)
    for _ in range(2):  # every start; the second finds it made
        subprocess.run(make.split(), check=True)
    st = outputs.stat()
    assert (outputs.owner(), outputs.group()) == (lab_users.service, lab_users.group)
    assert stat.S_IMODE(st.st_mode) == 0o2775


@pytest.mark.slow
def test_a_members_trial_batch_then_the_service_users_batch_share_records(
    lab_users: LabUsers,  # noqa: F811
) -> None:
    slides = lab_users.root / "slides"
    slides.mkdir(mode=0o755)
    shutil.copy2(BROKEN, slides / "broken.svs")
    (slides / "broken.svs").chmod(0o644)
    outputs = lab_users.root / "outputs"
    outputs.mkdir()
    shutil.chown(outputs, lab_users.service, lab_users.group)
    outputs.chmod(0o2775)  # as the worker unit makes it
    cli = [str(Path(sys.executable).parent / "wsi-segment"), "batch", str(slides)]
    cli += ["--out", str(outputs), "--workers", "0"]

    # a fresh PREFECT_HOME per user: the first start migrates its database, slow under load
    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    trial = lab_users.run(lab_users.admin, cli, env)  # the admin's trial, as the docs prescribe
    assert trial.returncode == 1, trial.stderr[-3000:]
    assert "failed (new)" in trial.stdout
    record = outputs / ".broken.failed.json"
    assert record.owner() == lab_users.admin and record.group() == lab_users.group
    assert stat.S_IMODE(record.stat().st_mode) == 0o664

    nightly = lab_users.run(lab_users.service, cli, env)
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    assert "failed (known, since " in nightly.stdout
    assert "in the way" not in nightly.stderr
    assert "failure not recorded" not in nightly.stderr
    # the service user's retry rewrites it in place, still readable to the group
    retry = lab_users.run(lab_users.service, [*cli, "--retry-failed"], env)
    assert retry.returncode == 1 and "failed (again, since " in retry.stdout, retry.stderr
    assert "failure not recorded" not in retry.stderr
    assert record.owner() == lab_users.service and record.group() == lab_users.group
    assert stat.S_IMODE(record.stat().st_mode) == 0o664
