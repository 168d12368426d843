"""A real browser for tests: Debian's headless Chromium, driven over the DevTools protocol.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ended by a NUL
byte) from its fd 3 and write to its fd 4, so a test talks to it with two pipes and the
standard library: no websocket, no driver, no port. `open_page` loads a file, waits for its
load event, and hands back every request the page made, every console message and uncaught
exception, a value the page computes (`evaluate`) and a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--remote-debugging-pipe",
)
WINDOW = (1280, 1000)  # CSS px, width and height: what the page lays out in and the screenshot


def missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
    return None


@dataclass
class PageLoad:
    """What a page did while it loaded and what the test asked of it."""

    requests: list[str] = field(default_factory=list)
    console: list[dict[str, Any]] = field(default_factory=list)  # type, text
    exceptions: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    screenshot: bytes = b""

    def errors(self) -> list[str]:
        """Console errors, log errors and uncaught exceptions, as text."""
        logged = [m["text"] for m in self.console if m["level"] == "error"]
        return logged + self.exceptions


class _Pipe:
    """One DevTools session over Chromium's pipe: commands by id, events collected."""

    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.proc, self.out, self.inp = proc, to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read(30.0)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium ended (exit {self.proc.poll()})")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self.read(max(0.1, deadline - time.monotonic())))


def open_page(
    path: Path, expressions: list[str], settle_s: float = 1.0, window: tuple[int, int] = WINDOW
) -> PageLoad:
    """Load `path` (file://) in a fresh headless Chromium profile with a `window` (width,
    height) viewport; evaluate `expressions` (JavaScript, each returning a JSON-able value)
    after the load event; screenshot the viewport."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    # the child's ends above 4, so putting them at 3 and 4 cannot overwrite one another
    child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
    child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
    for fd in (to_browser_r, from_browser_w):
        os.close(fd)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")

    def child_fds() -> None:  # the pipe ends at the fds Chromium reads and writes
        os.dup2(child_in, 3)
        os.dup2(child_out, 4)

    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(3, 4),  # kept open past the exec; everything else is closed
        preexec_fn=child_fds,
    )
    os.close(child_in)
    os.close(child_out)
    pipe = _Pipe(proc, to_browser_w, from_browser_r)
    try:
        return _load(pipe, path, expressions, settle_s, window)
    finally:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            pipe.send("Browser.close")
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_browser_w)
        os.close(from_browser_r)
        shutil.rmtree(profile, ignore_errors=True)


def _load(
    pipe: _Pipe, path: Path, expressions: list[str], settle_s: float, window: tuple[int, int]
) -> PageLoad:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})
    sid = session["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
        pipe.send(f"{domain}.enable", session=sid)
    metrics = {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False}
    pipe.send("Emulation.setDeviceMetricsOverride", metrics, session=sid)
    pipe.events.clear()  # what about:blank did is not the page's
    pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=sid)
    pipe.wait_for("Page.loadEventFired", 60.0)
    time.sleep(settle_s)  # lazy pictures in view, late console messages
    load = PageLoad()
    load.values = [
        pipe.send("Runtime.evaluate", {"expression": e, "returnByValue": True}, session=sid)[
            "result"
        ].get("value")
        for e in expressions
    ]
    shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=sid)
    load.screenshot = base64.b64decode(shot["data"])
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            load.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            level = "error" if params["type"] in ("error", "assert") else params["type"]
            load.console.append({"level": level, "text": text})
        elif method == "Log.entryAdded":
            entry = params["entry"]
            load.console.append({"level": entry["level"], "text": entry["text"]})
        elif method == "Runtime.exceptionThrown":
            load.exceptions.append(json.dumps(params["exceptionDetails"]))
    return load
