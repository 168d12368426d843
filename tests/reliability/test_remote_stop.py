"""A stop while a remote slide's server hangs: the run ends at once, not when the reads do.

A storage server that accepts requests and never answers holds each read for the store's
timeout (a minute a request, three attempts: `wsi.slide_path`, `wsi.retries`), and such a
read cannot be interrupted. A scheduler's SIGTERM (SLURM's `scancel`, Kubernetes) gives a
job about 30 s before SIGKILL: the run must end within that, cleaned up, however many of its
threads are stuck (`pipeline.threads.stop_wait_s`).
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, foreground_signals
from tests.reliability.conftest import CLI, REPO, cli_env, leftovers

# the requests served before the server hangs: the CLI's own open of the slide (which
# caches the whole small file: tissue is detected from it), then the reader threads' opens
ANSWERED = 2
STOPPED_WITHIN_S = 20.0  # a scheduler's grace period is ~30 s; a hung read lasts 60 s


class HangingServer(http.server.ThreadingHTTPServer):
    """Serves one file with byte ranges, then accepts every later request and never answers."""

    daemon_threads = True

    def __init__(self, data: bytes, answered: int) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.data, self.answered = data, answered
        self.requests = 0
        self.lock = threading.Lock()
        self.hanging = threading.Event()  # a request is held
        self.release = threading.Event()  # set at the end: held requests return

    def answers_next(self) -> bool:
        with self.lock:
            self.requests += 1
            return self.requests <= self.answered


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: HangingServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        if not self.server.answers_next():
            self.server.hanging.set()
            self.server.release.wait()
            return
        data = self.server.data
        start, end = 0, len(data) - 1
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if asked:
            start = int(asked[1])
            end = min(int(asked[2]) if asked[2] else end, len(data) - 1)
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if not head:
            self.wfile.write(data[start : end + 1])


@pytest.fixture
def hanging_server() -> Iterator[HangingServer]:
    server = HangingServer(CMU_SLIDE.read_bytes(), ANSWERED)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(300)
def test_sigterm_to_the_group_ends_a_run_whose_server_hangs(
    hanging_server: HangingServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """One reader thread per purpose (`--decoders 0`: the overlay's thumbnail, the chunks'
    prefetch), each stuck in a read the server never answers, while the main thread waits for
    their tiles: SIGTERM to the process group ends the run within seconds, exit 143, one
    `error:` line, nothing left. Before, it waited for the hung reads: over 170 s."""
    url = f"http://127.0.0.1:{hanging_server.server_address[1]}/{CMU_SLIDE.name}"
    out = tmp_path / "out"
    cmd = [*CLI, url, "--model", str(tiny_model_dir), "--out", str(out), "--decoders", "0"]
    with foreground_signals():
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
    try:
        assert hanging_server.hanging.wait(120), "the run never read past the server's answers"
        time.sleep(3)  # the main thread reaches its wait for the readers' tiles
        assert proc.poll() is None, proc.communicate()
        signalled = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert took < STOPPED_WITHIN_S, (took, err[-3000:])
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        "error: terminated (SIGTERM)"
    ], err[-3000:]
    assert leftovers(out) == []
