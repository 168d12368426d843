"""What the batch's temporary Prefect server writes on stderr, read instead of shown.

A server that cannot write its database (a home quota spent during the night) logs a
traceback for every request it fails: a batch whose slides had all finished ended in some
6,000 lines of SQL tracebacks. The batch keeps the server's stderr to itself: it counts the
errors and keeps the first exception line (what went wrong, e.g. "sqlite3.OperationalError:
database or disk is full"), and the CLI says it once (`flows.server_failure`).
"""

from __future__ import annotations

import re
import threading
from typing import IO

# a traceback's last line at the start of a line: "sqlite3.OperationalError: database or ..."
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b:? ?.*")
_ERROR_RECORD = re.compile(r"\|\s*(ERROR|CRITICAL)\s*\|")  # Prefect's console format


class ServerLog:
    """Reads a server's stderr to its end in a daemon thread (a pipe left unread would
    block the server once full): its error records counted, its first exception line kept.
    Only this thread writes them."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.errors = 0
        self.first_exception: str | None = None
        self._thread = threading.Thread(
            target=self._read, args=(stream,), name="prefect-server-log", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                self._take(raw.decode("utf-8", "replace").rstrip())

    def _take(self, line: str) -> None:
        if _ERROR_RECORD.search(line):
            self.errors += 1
        elif self.first_exception is None and _EXCEPTION_LINE.match(line):
            self.first_exception = line

    def wait_closed(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the server's stderr to close (it has ended)."""
        self._thread.join(timeout_s)
