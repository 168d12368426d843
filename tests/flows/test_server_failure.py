"""A batch whose Prefect server (`PREFECT_API_URL`) cannot write its database any more: one
line (`flows.server_failure`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import CMU_SLIDE, tmpfs

SERVER = [
    "-m",
    "uvicorn",
    "--factory",
    "prefect.server.api.server:create_app",
    "--host",
    "127.0.0.1",
]


def batch_env(**extra: str) -> dict[str, str]:
    """The environment of a user's batch: no Prefect settings of the test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(DO_NOT_TRACK="1", **extra)
    return env


@contextmanager
def batch_begun(
    out: Path, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`wsi-segment batch CMU --workers 0` started, once its flow has begun; the lines of its
    stderr so far, and later ones as they come. Waited for, or killed, on the way out."""
    cli = [str(Path(sys.executable).parent / "wsi-segment"), "batch", str(CMU_SLIDE)]
    batch = subprocess.Popen([*cli, "--out", str(out), "--workers", "0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    began = threading.Event()

    def read() -> None:
        assert batch.stderr is not None
        for line in batch.stderr:
            lines.append(line.rstrip("\n"))
            if "Beginning flow run" in line:
                began.set()
        began.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert began.wait(120), lines
        yield batch, lines
    finally:
        if batch.poll() is None:
            batch.kill()
        batch.wait()
        reader.join(30)


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
        server = subprocess.Popen([sys.executable, *SERVER, "--port", str(port)],
                                  stderr=subprocess.DEVNULL,
                                  env=batch_env(PREFECT_HOME=str(home)))  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not _answers(api) and time.monotonic() < deadline:
                time.sleep(0.1)
            env = batch_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "client"))
            with batch_begun(tmp_path / "out", env) as (batch, lines):
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
