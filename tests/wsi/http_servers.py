"""Real HTTP servers, started in the test's process, serving a folder: Python's own (which
ignores `Range:` and answers with the whole file), one that serves byte ranges as object
stores and nginx do, and one that says `Accept-Ranges: none`."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def served(folder: Path, handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """`folder` served over HTTP by `handler` while inside: its URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves `Range: bytes=a-b` (one range, as fsspec asks) with 206 Partial Content."""

    def do_GET(self) -> None:
        asked = self.headers.get("Range", "")
        if not asked.startswith("bytes="):
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        first, last = (int(n) for n in asked.removeprefix("bytes=").split("-"))
        part = data[first : last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{first + len(part) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)


class NoRangesHandler(http.server.SimpleHTTPRequestHandler):
    """Says it serves no part of a file (`Accept-Ranges: none`)."""

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "none")
        super().end_headers()
