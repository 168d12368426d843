"""What the engine could leak into /dev/shm, counted for this process only.

/dev/shm is shared by every process on the machine (another test run, a CI job beside
this one), so comparing its whole listing is flaky. This process's leaks are still its own:
shared memory named with this process's id (the engine's slot ring), and names this process
still maps: a multiprocessing semaphore left alive keeps its /dev/shm entry (found by inode:
glibc maps it under a temporary name) until it is freed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from wsi_segment.pipeline.inference.shm_rings import SHM_PREFIX


def _mapped_shm_inodes() -> set[int]:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return set()
    inodes = set()
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
            inodes.add(int(fields[4]))
    return inodes


def shm_entries() -> set[str]:
    """/dev/shm entries this process made (the engine's naming) or still maps."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return set()
    mine = f"{SHM_PREFIX}{os.getpid()}_"
    mapped = _mapped_shm_inodes()
    ours = set()
    for entry in shm.iterdir():
        with contextlib.suppress(OSError):  # another process removed it meanwhile
            if entry.name.startswith(mine) or entry.stat().st_ino in mapped:
                ours.add(entry.name)
    return ours
