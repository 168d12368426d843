"""Names of the decoders' shared-memory rings, and removing those their owner left behind.

A run removes its ring on every way out it sees (done, failed, Ctrl-C, SIGTERM, SIGHUP),
but a run that is killed (SIGKILL of its process group, the OOM killer) sees nothing: its
ring, often tens of MB, would stay in /dev/shm until the machine reboots. So a ring's name
says who owns it: `wsiseg<pid>_<pid namespace>_<random>`, and the next run that makes a ring
removes every ring whose owner is gone. A ring is only ever judged from its own name: it is
removed only when its owner's pid namespace is this process's (a pid means nothing across
namespaces, e.g. containers sharing /dev/shm) and no process has that pid any more; a ring
of a live process (or one we may not signal: another user's) is left alone, and so is
anything that does not have this exact form (older runs' rings, other programs' files).

The decoders' pipes (`pipeline.inference.decoder_link`) hold no named semaphore, so a ring
is all a killed run leaves in /dev/shm.
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
    except OSError:  # alive, another user's (EPERM), or a pid too large to be one
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
