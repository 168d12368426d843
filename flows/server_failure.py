"""A batch whose Prefect server failed under it: one `error:` line, not the tracebacks.

The slides' outputs never depend on Prefect: a slide that finished is complete, and a
rerun skips it as up to date. So when the server `PREFECT_API_URL` names stops answering
(its database full, its process killed) the batch says so once, with the cause and the fix,
and exits 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_segment.errors import OrchestrationError, exception_chain

if TYPE_CHECKING:
    import httpx

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


def server_failure(exc: BaseException, api_url: str) -> OrchestrationError | None:
    """The one error of a batch whose Prefect server at `api_url` failed under it with
    `exc`: what failed and the fix; None where `exc` is not such a failure."""
    if not is_server_failure(exc, api_url):
        return None
    said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return OrchestrationError(
        f"Prefect's server at {api_url} failed while the batch ran ({said}); {AFTER}; "
        "check that server, then rerun"
    )
