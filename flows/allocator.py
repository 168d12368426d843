"""glibc malloc arenas: two instead of one per thread, for the console script and workers.

glibc gives each thread that allocates concurrently its own arena (up to 8 per core) and
rarely hands freed arena memory back, so a run's RSS settles at whatever every thread's
arena once held. Two arenas took 230-300 MB off the peak of a 1770-tile run (2.08 -> 1.78
GB, demo model, 2 cores) at the same speed (benchmarks/RESULTS.md, memory). Tightening the
trim threshold instead took more off but cost 50 % of the speed, so it is left alone.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
ENV = "MALLOC_ARENA_MAX"
_M_ARENA_MAX = -8  # glibc malloc.h


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's arenas for this process (call before threads start). True when applied.

    A user's own MALLOC_ARENA_MAX wins; elsewhere than glibc (macOS, musl) nothing happens.
    """
    if ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # this process's libc, no ldconfig lookup
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, int(arenas)))


def worker_environment(arenas: int = ARENAS) -> dict[str, str]:
    """Environment for Dask worker processes this tool starts: the same cap via glibc's
    variable (read at process start: it must be set before the worker is spawned), unless
    the user set their own."""
    return {} if ENV in os.environ else {ENV: str(arenas)}
