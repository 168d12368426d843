"""The batch's temporary Prefect server as a process: started, watched, started again.

A server process that ends while the batch runs (killed by hand, by the OOM killer) left
every Prefect call of the flow retrying a closed port: the slides went on, each state change
minutes late, and a five-slide batch took six minutes more before it failed. `ServerKeeper`
starts it again on the same port and database, so the flow's retries reach it within
seconds and the batch goes on; the CLI says afterwards that it was restarted
(`flows.server_failure.server_trouble`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from wsi_segment.flows.server_log import ServerLog

KEEP_POLL_S = 0.5  # how often the keeper looks at the server process
RESTARTS = 3  # a server that keeps ending is left ended: the batch then fails with its error


def server_env() -> dict[str, str]:
    """The environment Prefect gives its own temporary server, and our settings."""
    from prefect.settings import get_current_settings

    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }


def ended_words(code: int) -> str:
    """A process's return code in words: "killed by SIGKILL", "exit status 1"."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class LocalServer:
    """The temporary server on 127.0.0.1:`port`, in a session of its own: its current
    process, each of its processes' stderr (`ServerLog`), and why each earlier one ended."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.port, self.url, self._env = port, f"http://127.0.0.1:{port}/api", env
        self.logs: list[ServerLog] = []
        self.restarts: list[str] = []
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wsi_segment.flows.local_server", str(self.port)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env,
            start_new_session=True,
        )
        assert proc.stderr is not None
        self.logs.append(ServerLog(proc.stderr))
        return proc

    def restart(self, why: str) -> None:
        """A new process in place of one that ended (`why`), on the same port."""
        self.restarts.append(why)
        self.proc = self._spawn()

    @property
    def errors(self) -> int:
        """Error records its processes logged."""
        return sum(log.errors for log in self.logs)

    @property
    def first_exception(self) -> str | None:
        """The first exception line any of its processes wrote."""
        return next((log.first_exception for log in self.logs if log.first_exception), None)


def healthy(
    proc: subprocess.Popen[bytes], url: str, timeout_s: float, give_up: threading.Event
) -> bool:
    """Wait for the server at `url` to answer; False if its process ended first, or once
    `give_up` is set."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client() as client:
        while time.monotonic() < deadline and proc.poll() is None and not give_up.is_set():
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health", timeout=2).status_code == 200:
                    return True
            give_up.wait(0.1)
    return False


class ServerKeeper:
    """Starts `server` again whenever its process ends, up to `RESTARTS` times, until
    `stop`: a thread that looks every `KEEP_POLL_S`."""

    def __init__(self, server: LocalServer, timeout_s: float) -> None:
        self._server, self._timeout_s = server, timeout_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="prefect-server-keeper")
        self._thread.daemon = True
        self._thread.start()

    def _keep(self) -> None:
        server = self._server
        while not self._stopping.wait(KEEP_POLL_S):
            code = server.proc.poll()
            if code is None or len(server.restarts) >= RESTARTS:
                continue
            server.restart(ended_words(code))
            healthy(server.proc, server.url, self._timeout_s, self._stopping)

    def stop(self) -> None:
        """No more restarts; returns once the keeper has ended (a start under way included:
        the caller then stops whichever process `server.proc` is)."""
        self._stopping.set()
        self._thread.join()
