"""A batch whose temporary Prefect server cannot write its database any more: one line."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import tmpfs
from tests.flows.test_server_process import SERVER_MODULE, batch_and_its_server, batch_env


@pytest.mark.slow  # a whole batch under a temporary Prefect server whose home fills (~40 s); the server goes with #75
def test_a_prefect_home_that_fills_under_a_batch_ends_it_in_one_error_line(
    tmp_path: Path,
) -> None:
    """PREFECT_HOME on a 40 MiB file system, room enough for the check before the server
    starts, filled once the flow has begun (a home quota spent by something else in the
    night): the batch ends with one `error:` line naming the database's folder, the server's
    own error and the fixes, exit 1, no traceback. Before: some 6,000 lines of the server's SQL tracebacks, then the flow's, and no
    table."""
    with tmpfs(tmp_path / "home", "size=40m") as home:
        out = tmp_path / "out"
        with batch_and_its_server(out, batch_env(PREFECT_HOME=str(home))) as (batch, _, lines):
            _fill(home)
            batch.wait(300)
        stderr = "\n".join(lines)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: the temporary Prefect server could not write its database in {home} "
        "(sqlite3.OperationalError: database or disk is full) while the batch ran; slides "
        "that finished keep their outputs, and a rerun skips them as up to date; free space "
        "there (`prefect server database reset -y` empties the server's history: "
        "wsi-segment's outputs do not depend on it), set PREFECT_HOME to a folder with room, "
        "or run a Prefect server and set PREFECT_API_URL (docs/deploy.md)"
    ], stderr[-3000:]
    assert batch.returncode == 1
    assert "Traceback" not in stderr and "sqlalchemy" not in stderr, stderr[-3000:]
    assert len(stderr.splitlines()) < 80, stderr[-3000:]


@pytest.mark.slow  # a whole batch against a server whose database fills (~40 s)
def test_a_server_of_yours_whose_database_fills_is_named_in_the_one_line(tmp_path: Path) -> None:
    """The same with `PREFECT_API_URL` naming a running server (here one on this machine
    whose home fills once the batch's flow has begun): one `error:` line naming that server
    and its answer, exit 1, no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    with tmpfs(tmp_path / "home", "size=40m") as home:
        server = subprocess.Popen([sys.executable, "-m", SERVER_MODULE, str(port)],
                                  stdin=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env=batch_env(PREFECT_HOME=str(home)))  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not _answers(api) and time.monotonic() < deadline:
                time.sleep(0.1)
            env = batch_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "client"))
            with batch_and_its_server(tmp_path / "out", env, own_server=False) as (batch, _, lines):
                _fill(home)
                batch.wait(300)
        finally:
            server.kill()
            server.wait()
    stderr = "\n".join(lines)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: Prefect's server at {api} failed while the batch ran (Server error '500 "
    ), stderr[-3000:]
    assert errors[0].endswith(
        "slides that finished keep their outputs, and a rerun skips them as up to date; check "
        "that server, then rerun"
    )
    assert batch.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]


def _answers(api: str) -> bool:
    try:
        return bool(httpx.get(f"{api}/health", timeout=1).is_success)
    except httpx.HTTPError:
        return False


def _fill(folder: Path) -> None:
    """Write into `folder` until its file system is full."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        block = b"\0" * (1 << 20)
        try:
            while True:
                filler.write(block)
        except OSError:
            pass
