"""A PostgreSQL cluster of one test, as Prefect's server uses it in the systemd recipe.

initdb in a fresh folder, the server listening on a Unix socket in that folder only (no TCP
port that another engineer's cluster could hold), trust authentication (the socket is the
folder owner's alone), one database `prefect`; stopped and removed at the end. PostgreSQL
refuses to run as root, so a root test runs it as the `postgres` user Debian's package makes.
Where none of this can be stood up, the test is skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (Debian keeps them off PATH)."""
    found = shutil.which("initdb") or max(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), default=None
    )
    if found is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    return Path(found).resolve().parent


def cluster_user() -> str | None:
    """The user to run PostgreSQL as: `postgres` for root, else None (this user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    return "postgres"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A running cluster with an empty database; yields its `postgresql+asyncpg://` URL."""
    pytest.importorskip("asyncpg", reason="the asyncpg driver is not installed (extra `server`)")
    bin_dir, user = postgres_bin(), cluster_user()
    folder = Path(tempfile.mkdtemp(prefix="wsi-pg-"))  # short: a socket path has ~100 bytes
    if user is not None:
        shutil.chown(folder, user)

    def run(*argv: str) -> None:
        done = subprocess.run(
            argv, user=user, cwd=folder, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"

    data = folder / "data"
    options = f"-k {folder} -c listen_addresses=''"
    try:
        run(
            str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options,
            "-w", "-t", "120", "start")  # fmt: skip
        try:
            run(str(bin_dir / "createdb"), "-h", str(folder), "-U", "postgres", "prefect")
            yield f"postgresql+asyncpg://postgres@/prefect?host={folder}"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder)
