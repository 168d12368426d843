"""Whether a run is writing a slide's outputs now, or stopped half way: what the morning
report says of a slide with no finished folder but a `.<name>.partial` one.

The run's lock (`.<name>.lock`, an flock a run holds while it writes) is tested, never held
for long: a shared lock taken and dropped at once says whether a run holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_reason(writing: bool) -> str:
    """The report's reason for a slide a run is writing now (`writing`), or one a stopped
    run left half written."""
    if writing:
        return "another run is writing this slide's outputs now; rebuild the report when it ends"
    return "a run stopped while writing this slide's outputs; the next run redoes it"


def being_written(root: Path, name: str) -> bool | None:
    """True when a run holds the slide's lock now, False when only a stopped run's partial
    folder is there, None when neither (the lock is tested, never taken for long)."""
    lock = root / f".{name}.lock"
    partial = root / f".{name}{PARTIAL_SUFFIX}"
    if os.path.islink(lock) or not lock.is_file():
        return False if partial.is_dir() else None
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False if partial.is_dir() else None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing drops a lock we took
    return False if partial.is_dir() else None
