"""Names of the decoders' shared-memory rings, and removing those their owner left behind.

A killed run (SIGKILL, the OOM killer) cannot remove its ring, so a ring's name says who owns
it: `wsiseg<pid>_<pid namespace>_<random>`, and the next run that makes a ring removes every
ring of this exact form whose owner's pid namespace is ours and whose pid no longer exists.
Anything else (live owners, other namespaces or users, other files) is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets

SHM_DIR = "/dev/shm"
SHM_PREFIX = "wsiseg"
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
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # alive, another user's (EPERM), or too large a pid
        return False
    return False


def remove_abandoned_rings(shm_dir: str = SHM_DIR) -> list[str]:
    """Remove the rings of owners that have ended (`owner_gone`); returns their names."""
    namespace = pid_namespace()
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        if name.startswith(SHM_PREFIX) and owner_gone(name, namespace):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(os.path.join(shm_dir, name))
                removed.append(name)
    return removed
