"""Whether a Dask client can still deliver its futures' results.

Once a client is closed, or its event loop has stopped turning, none of its futures ever
completes and a wait would last for ever. A polling wait asks `ClientWatch.check` each step:
the client's status, and whether a callback handed to its loop ran within `stall_s`.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from wsi_segment.errors import SlideError

if TYPE_CHECKING:
    from distributed import Client

# A live loop runs a callback within milliseconds; a loaded machine's busiest client, a few
# seconds. Far longer than either, and still short beside a night's batch.
LOOP_STALL_S = 60.0
GONE_STATUSES = ("closing", "closed")


class ClientWatch:
    """Watches one client while a thread waits on its futures (called from that thread);
    `client` None: nothing to watch (no futures), never gone."""

    def __init__(self, client: Client | None, stall_s: float = LOOP_STALL_S) -> None:
        self.client = client
        self.stall_s = stall_s
        self._answered = threading.Event()
        self._asked_at: float | None = None
        self._gone: SlideError | None = None  # once found gone, the client stays gone

    def cause(self) -> SlideError | None:
        """The error naming why the client cannot deliver results any more (closed, or its
        loop ran no callback within `stall_s`), or None while it can; each call while it can
        hands its loop the next callback (one at a time)."""
        if self._gone is None and self.client is not None:
            self._gone = self._cause(self.client)
        return self._gone

    def check(self) -> None:
        """Raise `cause()`, if there is one."""
        gone = self.cause()
        if gone is not None:
            raise gone

    def _cause(self, client: Client) -> SlideError | None:
        status = str(client.status)
        if status in GONE_STATUSES:
            return SlideError(
                f"the Dask client was closed (status {status!r}) while this slide waited for "
                "its bands; no result can arrive: run the slide again (and check what closed "
                "the client: the process shutting down, another thread)"
            )
        now = time.monotonic()
        if self._asked_at is None or self._answered.is_set():
            self._answered.clear()
            self._asked_at = now
            loop = client.loop
            if loop is None:  # a client without a loop has been closed
                return SlideError("the Dask client has no event loop (closed); run the slide again")
            loop.add_callback(self._answered.set)
        elif now - self._asked_at > self.stall_s:
            return SlideError(
                f"the Dask client's event loop has not turned for {self.stall_s:g} s while "
                "this slide waited for its bands (its thread ended, or something blocks it); "
                "no result can arrive: run the slide again, and check the log for an error "
                "in the client's event loop"
            )
        return None
