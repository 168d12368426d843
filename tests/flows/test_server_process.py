"""The batch's temporary Prefect server killed under a running batch: started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import CMU_SLIDE

SERVER_MODULE = "wsi_segment.flows.local_server"


def batch_env(**extra: str) -> dict[str, str]:
    """The environment of a user's batch: no Prefect settings of the test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(DO_NOT_TRACK="1", **extra)
    return env


@contextmanager
def batch_and_its_server(
    out: Path, env: dict[str, str], own_server: bool = True
) -> Iterator[tuple[subprocess.Popen[str], psutil.Process | None, list[str]]]:
    """`wsi-segment batch CMU --workers 0` started, and its temporary server's process, once
    the flow has begun (its first line on stderr; None with `own_server` False: a server
    of `PREFECT_API_URL`); the lines of stderr so far, and later
    ones, as they come. The batch is waited for, or killed, on the way out."""
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
        server = _answering_server(batch.pid) if own_server else None
        assert began.wait(120), lines
        yield batch, server, lines
    finally:
        if batch.poll() is None:
            batch.kill()
        batch.wait()
        reader.join(30)


def _answering_server(batch_pid: int, timeout_s: float = 120) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(batch_pid).children():
            with_module = child.cmdline()
            if SERVER_MODULE in with_module:
                port = with_module[-1]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).is_success:
                        return child
                except httpx.HTTPError:
                    pass
        time.sleep(0.05)
    raise AssertionError("the batch's temporary server never answered")


@pytest.mark.slow  # a whole batch whose temporary server is killed and started again (~40 s); the server goes with #75
def test_a_server_killed_under_a_batch_is_started_again_and_the_batch_ends_well(
    tmp_path: Path,
) -> None:
    """SIGKILL to the temporary server once the batch's flow has begun (a user's `pkill`, the OOM
    killer): started again on its port and database, the batch finishes with its table and
    exit 0, and one `warning:` line says what happened. Before: every Prefect call of the flow
    retried the closed port; a five-slide batch took six minutes more, then failed with a
    traceback and no table."""
    out = tmp_path / "out"
    with batch_and_its_server(out, batch_env()) as (batch, server, lines):
        assert server is not None
        port = server.cmdline()[-1]
        server.send_signal(signal.SIGKILL)
        stdout = batch.stdout.read() if batch.stdout else ""
        batch.wait(300)
    stderr = "\n".join(lines)
    assert batch.returncode == 0, stderr[-3000:]
    assert any(line.startswith(f"| {CMU_SLIDE} | done |") for line in stdout.splitlines()), stdout
    assert f"report: {out / 'report.html'}" in stdout
    warnings = [line for line in stderr.splitlines() if "temporary Prefect server" in line]
    assert warnings == [
        "warning: the temporary Prefect server ended (killed by SIGKILL) and was started again "
        "during the batch: its record of the run may be incomplete, the outputs are not"
    ], stderr[-3000:]
    assert "Traceback" not in stderr
    assert (out / "CMU-1-Small-Region" / "summary.json").is_file()
    ours = [SERVER_MODULE, port]
    left = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-2:] == ours]
    assert left == []  # the restarted server stopped with the batch
