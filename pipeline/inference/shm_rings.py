"""The decoders' shared-memory rings in /dev/shm: names, sizes, and removing abandoned ones.

A killed run (SIGKILL, the OOM killer) cannot remove its ring, so a ring's name says who owns
it: `wsiseg<pid>_<pid namespace>_<random>`, and the next run that makes a ring removes every
ring of this exact form whose owner's pid namespace is ours and whose pid no longer exists.
Anything else (live owners, other namespaces or users, other files) is left alone. Each
failure to size, create or reserve a ring is one error with the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from multiprocessing.shared_memory import SharedMemory

from wsi_segment.errors import WsiSegmentError

SHM_DIR = "/dev/shm"
SHM_PREFIX = "wsiseg"
SHM_FIX = (
    "pass fewer --decoders, --decoders 0 (one reader thread), or give the container more "
    "(docker run --shm-size=1g)"
)
_RING = re.compile(rf"{SHM_PREFIX}(\d+)_([0-9a-f]+)_[0-9a-f]{{12}}")


def pid_namespace() -> str:
    """This process's pid namespace, as hex (the inode of /proc/self/ns/pid; "0" where
    there is no /proc, and then no ring is ever judged abandoned)."""
    try:
        return format(os.stat("/proc/self/ns/pid").st_ino, "x")
    except OSError:
        return "0"


def ring_name() -> str:
    """A fresh shared-memory name owned by this process."""
    return f"{SHM_PREFIX}{os.getpid()}_{pid_namespace()}_{secrets.token_hex(6)}"


def owner_gone(name: str, namespace: str) -> bool:
    """Whether `name` is a ring whose owner, in pid namespace `namespace`, has ended."""
    match = _RING.fullmatch(name)
    if match is None or match.group(2) != namespace or namespace == "0":
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except (OSError, OverflowError) as exc:  # not ended: another user's (EPERM), too large
        return isinstance(exc, ProcessLookupError)
    return False


def remove_abandoned_rings() -> list[str]:
    """Remove the rings of owners that have ended (`owner_gone`); returns their names."""
    namespace = pid_namespace()
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        if owner_gone(name, namespace):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
    return removed


def ring_slots(decoders: int, slot_bytes: int) -> int:
    """Slots for `decoders`: two each (one being filled, one waiting) plus two, within half of
    the free shared memory (containers often mount a small /dev/shm); at least decoders + 1."""
    wanted = 2 * decoders + 2
    try:
        st = os.statvfs(SHM_DIR)
        free = st.f_bavail * st.f_frsize
    except OSError:
        return wanted
    fits = (free // 2) // max(1, slot_bytes)
    if fits < decoders + 1:
        raise WsiSegmentError(
            f"{SHM_DIR}: {shown_size(free)} of shared memory free, the engine needs "
            f"{shown_size((decoders + 1) * slot_bytes * 2)} for {decoders} decoders; {SHM_FIX}"
        )
    return int(min(wanted, fits))


def create_block(name: str, size: int) -> SharedMemory:
    """A new shared-memory block; a /dev/shm this user may not write (mounted read-only, or
    another user's mode) is one error with the fix, not the library's traceback."""
    try:
        return SharedMemory(name, create=True, size=size)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
            raise
        raise WsiSegmentError(
            f"{SHM_DIR}: the decoders' {shown_size(size)} of shared memory cannot be created "
            f"there ({exc.strerror}); pass --decoders 0 (one reader thread, the same outputs), "
            f"or run where {SHM_DIR} is writable by this user"
        ) from None


def shown_size(n: int) -> str:
    """`n` bytes for a message: MiB to one decimal, or KiB below 1 MiB (never "0 MiB free")."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def reserve_block(name: str, size: int) -> None:
    """Take the ring's pages from /dev/shm now: tmpfs hands them out on first write, so
    rings sized one after another (a batch's slides) would each see the same free memory,
    and together outgrow a small /dev/shm; a decoder filling a slot then dies of SIGBUS.
    Reserved, the next ring is sized from what is left, and a full /dev/shm is this error."""
    try:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    except OSError:  # shared memory not under /dev/shm (not Linux): nothing to reserve
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            return  # a file system without fallocate: pages come on first write
        raise WsiSegmentError(
            f"{SHM_DIR}: no room for the decoders' {shown_size(size)} of shared memory (other "
            f"slides' or programs' hold the rest); {SHM_FIX}"
        ) from None
    finally:
        os.close(fd)
