"""Which I/O errors may pass on retry, and the short retry loop of slide reads.

`is_transient` is the one rule of the project: slide reads retry by it (`with_retries`,
under 1 s in all), and the Prefect flows retry a failed stage by it (seconds apart).
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from wsi_segment.errors import exception_chain
from wsi_segment.open_files import exhaustion
from wsi_segment.wsi.shown_path import shown_text

RETRY_DELAYS_S = (0.2, 0.6)  # a read's sleep before the 2nd and the 3rd attempt
READ_ATTEMPTS = len(RETRY_DELAYS_S) + 1
# OSErrors that waiting does not fix (s3fs/gcsfs map 404 and 403 to the first two as well)
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# errno values of I/O failures that a later attempt can get past (network shares, NFS)
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_transient(exc: BaseException | None) -> bool:
    """True for I/O errors that may pass on retry, also when wrapped (`raise ... from`, or
    raised while handling one). The one rule of the project: slide reads retry by it here,
    and the Prefect flows retry their stages by it.

    Timeouts and connection errors, and OSErrors with a network/NFS errno or none at all
    (remote file systems often give none) are transient. Errors that waiting does not fix
    are not: a missing file, permissions, a full disk or read-only file system, and running
    out of file descriptors anywhere in the chain (`wsi_segment.open_files.exhaustion`):
    what fills this process's table is mostly the run itself (its decoders, its cluster's
    connections), so a retry a second later meets the same limit, and a stage retried while
    out of descriptors only adds errors; the fix is the limit, which the error names.
    """
    if exhaustion(exc) is not None:
        return False
    for error in exception_chain(exc):
        if isinstance(error, TimeoutError | ConnectionError) or _server_busy(error):
            return True
        if isinstance(error, OSError):
            if isinstance(error, PERMANENT_OS_ERRORS):
                return False
            return error.errno is None or error.errno in TRANSIENT_ERRNOS
    return False


def _server_busy(exc: BaseException) -> bool:
    """An HTTP store's 5xx or 429 (aiohttp's ClientResponseError, which fsspec's HTTP file
    system raises): the server's trouble, which passes. Looked up only where aiohttp is
    loaded already (an exception of it can exist only then): decoders never import it."""
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None or not isinstance(exc, aiohttp.ClientResponseError):
        return False
    return bool(exc.status >= 500 or exc.status == 429)


def with_retries(
    fn: Callable[[], T],
    what: str,
    delays: Sequence[float] = RETRY_DELAYS_S,
    wait: Callable[[float], object] = time.sleep,
) -> T:
    """`fn()`, called again after each of `delays` while it fails with a transient error.

    At most len(delays) + 1 calls; the last error (or any non-transient one) propagates.
    `wait` waits out a delay (a cancellable one may raise instead: a batch's stage).
    """
    attempts = len(delays) + 1
    for attempt, delay in enumerate(delays, start=1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            failed = shown_text(f"{what} failed ({type(exc).__name__}: {exc})")
            log.warning("%s; attempt %d of %d in %.1f s", failed, attempt + 1, attempts, delay)
        wait(delay)
    return fn()
