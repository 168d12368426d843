"""A batch whose Prefect server failed under it: one `error:` line, not the tracebacks.

The slides' outputs never depend on Prefect: a slide that finished is complete, and a
rerun skips it as up to date. So when the server stops answering (its database full, its
process killed) the batch says so once, with the cause and the fix, prints where its report
is, and exits 1; the server's own log is summarised by `flows.server_log`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.errors import OrchestrationError, exception_chain
from wsi_segment.flows.local_server import database_folders
from wsi_segment.flows.server_process import LocalServer, ended_words

if TYPE_CHECKING:
    import httpx

# what the server's first exception says when its database has no room to grow
_NO_ROOM = ("database or disk is full", "No space left on device", "Disk quota exceeded")
AFTER = "slides that finished keep their outputs, and a rerun skips them as up to date"


def is_server_failure(exc: BaseException, api_url: str) -> bool:
    """Whether `exc` is a call to Prefect's API at `api_url` that the server failed: an
    answer of 5xx, or none (an error of a slide's own remote read is not)."""
    for cause in exception_chain(exc):
        call = _failed_call(cause)
        if call is not None and _requested(call, api_url):
            return True
    return False


def _failed_call(exc: BaseException) -> httpx.HTTPError | None:
    """`exc` if it is an HTTP call answered 5xx, or not answered."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, httpx.TransportError):
        return exc
    if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code >= 500:
        return exc
    return None


def _requested(exc: httpx.HTTPError, api_url: str) -> bool:
    try:
        return str(exc.request.url).startswith(api_url.rstrip("/"))
    except RuntimeError:  # an error raised without its request
        return False


def server_failure(
    exc: BaseException, server: LocalServer | None, api_url: str
) -> OrchestrationError | None:
    """The one error of a batch whose Prefect server (`server`: ours; None: the one at
    `api_url`) failed under it with `exc`: what failed, why, and the fix; None where `exc`
    is not such a failure."""
    if not is_server_failure(exc, api_url):
        return None
    return OrchestrationError(_failure_words(exc, server, api_url))


def _failure_words(exc: BaseException, server: LocalServer | None, api_url: str) -> str:
    said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if server is None:
        return (
            f"Prefect's server at {api_url} failed while the batch ran ({said}); {AFTER}; "
            "check that server, then rerun"
        )
    code = server.proc.poll()
    ended = [*server.restarts, *([ended_words(code)] if code is not None else [])]
    if ended:  # a flow's call that found it gone may fail before it is started again
        return (
            f"the temporary Prefect server ended ({ended[0]}) while the batch ran; {AFTER}; rerun"
        )
    cause = server.first_exception or said
    if any(words in cause for words in _NO_ROOM):
        folder = database_folders()[-1]
        return (
            f"the temporary Prefect server could not write its database in {folder} ({cause}) "
            f"while the batch ran; {AFTER}; free space there (`prefect server database reset "
            "-y` empties the server's history: wsi-segment's outputs do not depend on it), set "
            "PREFECT_HOME to a folder with room, or run a Prefect server and set "
            "PREFECT_API_URL (docs/deploy.md)"
        )
    return f"the temporary Prefect server failed while the batch ran ({cause}); {AFTER}; rerun"


def server_trouble(server: LocalServer | None) -> str | None:
    """A warning for a batch that ended although its temporary server was restarted or
    logged errors."""
    if server is None or not (server.errors or server.restarts):
        return None
    said = [f"ended ({why}) and was started again" for why in server.restarts]
    if server.errors:
        first = f", the first: {server.first_exception}" if server.first_exception else ""
        said.append(f"logged {server.errors} error(s){first}")
    return (
        f"the temporary Prefect server {'; '.join(said)} during the batch: its record of the "
        "run may be incomplete, the outputs are not"
    )
