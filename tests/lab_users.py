"""Real other users for tests of shared folders: a lab group and two of its members.

A lab's output folder is written by a service user (the nightly runs) and by people (an
admin's trial run, an operator's `--retry-failed`). Tests run commands as these users with
`runuser` (which also sets their supplementary groups, as a login would), so the kernel, not
the test, decides what each may read and write. Creating users needs root: elsewhere the
tests skip, saying why. The users are made once per machine (`useradd`, no home, no shell)
and kept: removing them could pull them from under another test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GROUP = "wsitest-lab"
ADMIN = "wsitest-admin"  # runs the trial batch the docs prescribe
SERVICE = "wsitest-svc"  # runs the nightly batches
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LabUsers:
    group: str
    admin: str
    service: str
    root: Path  # a scratch folder every user may traverse

    def run(
        self, user: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`argv` run as `user` (with the lab group), in the repository, HOME in `root`."""
        home = self.root / f"home-{user}"
        if not home.exists():
            home.mkdir()
            shutil.chown(home, user, user)
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        # runuser resets HOME to the user's (none here): set it again after it
        settings = {"HOME": str(home), "TMPDIR": str(home), **(env or {})}
        return subprocess.run(
            ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in settings.items()), *argv],
            cwd=REPO,
            env=base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def python(self, user: str, code: str) -> subprocess.CompletedProcess[str]:
        """Python `code` run as `user` by this interpreter."""
        return self.run(user, [sys.executable, "-c", code])


def _ensure_users() -> str | None:
    """Create the group and users if missing; why not, when they cannot be."""
    if os.geteuid() != 0:
        return "needs root to create users (useradd) and run commands as them (runuser)"
    for tool in ("useradd", "groupadd", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    subprocess.run(["groupadd", "-f", GROUP], check=True)
    for user in (ADMIN, SERVICE):
        known = subprocess.run(["id", user], capture_output=True)
        if known.returncode != 0:
            subprocess.run(
                ["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                 "-G", GROUP, user],
                check=True, capture_output=True,
            )  # fmt: skip
    probe = subprocess.run(
        ["runuser", "-u", SERVICE, "--", sys.executable, "-c", "import wsi_segment"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        return (
            f"user {SERVICE} cannot run {sys.executable} with this project (a folder on the "
            f"way is not traversable by others, e.g. /root at 0700): {probe.stderr.strip()[-200:]}"
        )
    return None


@pytest.fixture
def lab_users() -> Iterator[LabUsers]:
    why_not = _ensure_users()
    if why_not is not None:
        pytest.skip(why_not)
    root = Path(tempfile.mkdtemp(prefix="wsitest-lab-"))
    root.chmod(0o755)
    try:
        yield LabUsers(GROUP, ADMIN, SERVICE, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def lab_folder(path: Path, owner: str, mode: int = 0o2775) -> Path:
    """A folder owned by `owner` and the lab group, with `mode` (default setgid, g+w)."""
    path.mkdir(parents=True)
    shutil.chown(path, owner, GROUP)
    path.chmod(mode)
    return path
