"""The temporary Prefect server of `wsi-segment batch`, out of the batch's process group.

Without `PREFECT_API_URL` a flow talks to a temporary local server. Prefect starts its own
as a child in the caller's process group, so whatever stops a batch through its group
(Ctrl-C in a terminal, `timeout`, SLURM, Kubernetes, a dropped ssh session) stops that
server first, and the interrupted flow then retries a dead server for minutes before it
can report anything. This server runs in a session of its own: a signal to the batch's
group never reaches it, the batch stops, reports to it, and stops it last (`temporary_server`).

A server outside the group must still never outlive the batch, however the batch ends: it
reads its stdin, a pipe only the batch holds, and shuts down when that pipe closes, which
the kernel does when the batch exits for any reason, SIGKILL included.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from wsi_segment.errors import ConfigError
from wsi_segment.flows.server_process import LocalServer, ServerKeeper, healthy, server_env

STOP_S = 5.0  # the most the server is given to shut down before it is killed
ORPHAN_EXIT_S = 10.0  # the server's own limit once the batch has gone
ATTEMPTS = 3  # a port taken between choosing it and binding it: try another
# Free space the temporary server's database needs to record a batch: a fresh one after a
# two-slide batch took 5.3 MB (prefect.db 1.3 MB, its write-ahead log 4 MB), and each batch
# adds its flow and task runs (2026-11-28)
DATABASE_ROOM = 32 << 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_database_folders() -> None:
    """The temporary server keeps its SQLite database in Prefect's home folder: one that
    cannot be made or written is reported here, with the fix, instead of as a server that
    fails to start three times and then "did not start within 90 s"."""
    folders = database_folders()
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            usable = os.access(folder, os.W_OK | os.X_OK)
        except OSError:
            usable = False
        if not usable:
            raise ConfigError(
                f"{folder}: cannot create or write Prefect's folder for the temporary server's "
                f"database (HOME={os.environ.get('HOME', '')}); set PREFECT_HOME to a writable "
                "folder, or run a Prefect server and set PREFECT_API_URL (docs/deploy.md)"
            )
    check_database_room(folders[-1])


def database_folders() -> list[Path]:
    """Prefect's home folder, then the folder of the temporary server's SQLite database
    (the home, unless its connection URL puts it elsewhere)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    folders = [Path(settings.home).expanduser()]
    secret = settings.server.database.connection_url
    url = secret.get_secret_value() if secret is not None else ""
    if url.startswith("sqlite") and ":///" in url and ":memory:" not in url:
        folders.append(Path(url.split(":///", 1)[1]).expanduser().parent)
    return folders


def check_database_room(folder: Path) -> None:
    """Refuse, in a second, a batch whose temporary server's database has no room to grow:
    a full home (a quota) let every slide finish, then the server's failed writes ended the
    batch with thousands of traceback lines, exit 1 and no table. Asked by reserving
    `DATABASE_ROOM` in a file of ours there, removed at once (quotas count it, where the free
    space of the file system would not show a user's quota)."""
    probe = folder / f".wsi-segment-room-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, DATABASE_ROOM)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return  # cannot tell (no fallocate there): the server's own start says
        st = os.statvfs(folder)
        raise ConfigError(
            f"{folder}: no room for the temporary Prefect server's database ({exc.strerror}; "
            f"{st.f_bavail * st.f_frsize >> 20} MiB free, it needs {DATABASE_ROOM >> 20} MiB); "
            "free space there (`prefect server database reset -y` empties the server's "
            "history: wsi-segment's outputs do not depend on it), set PREFECT_HOME to a folder "
            "with room, or run a Prefect server and set PREFECT_API_URL (docs/deploy.md)"
        ) from None


def start_server() -> LocalServer:
    """A temporary server in its own session, answering; its stderr read (`ServerLog`)."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    check_database_folders()
    timeout_s = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    env, never = server_env(), threading.Event()
    said = ""
    for _ in range(ATTEMPTS):
        server = LocalServer(_free_port(), env)
        try:
            up = healthy(server.proc, server.url, timeout_s, never)
        except BaseException:  # Ctrl-C while it starts: it must not stay behind
            stop_server(server.proc)
            raise
        if up:
            return server
        stop_server(server.proc)
        server.logs[-1].wait_closed(STOP_S)
        said = f" (its error: {server.first_exception})" if server.first_exception else said
    raise ConfigError(
        f"the temporary Prefect server did not start within {timeout_s:g} s{said}; raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run a Prefect server and set "
        "PREFECT_API_URL (docs/deploy.md)"
    )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Close its pipe and SIGTERM it, then SIGKILL if it has not ended within STOP_S; a
    second interrupt meanwhile does not leave it running."""
    try:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        proc.wait(timeout=STOP_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
            raise


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued to the server before it stops (else they
    are retried against a closed port and reported as errors at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=STOP_S)
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=STOP_S)


@contextlib.contextmanager
def temporary_server() -> Iterator[LocalServer | None]:
    """While the block runs, Prefect talks to a temporary server of ours (yielded), unless
    `PREFECT_API_URL` names one already (None is yielded)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield None
        return
    server = start_server()
    keeper = ServerKeeper(server, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            try:
                yield server
            finally:
                _drain_prefect_workers()
    finally:
        keeper.stop()
        stop_server(server.proc)


def _exit_when_orphaned() -> None:
    """In the server: once stdin closes (the batch is gone, or asks it to stop), shut
    down as on SIGTERM, and end at once if that takes too long."""
    while sys.stdin.buffer.read(65536):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_EXIT_S)
    os._exit(0)


def main(port: int) -> None:
    """The server process: Prefect's API app under uvicorn on 127.0.0.1:`port`."""
    import uvicorn

    threading.Thread(target=_exit_when_orphaned, daemon=True).start()
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
