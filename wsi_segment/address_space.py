"""The address-space limit (RLIMIT_AS, `ulimit -v`): refused when too low, and named when a
run runs out of memory under it.

HPC login nodes and some SLURM setups cap a process's virtual address space. A run maps far
more than it uses (shared libraries, thread stacks, allocator arenas): the CMU slide ran
under 1.25 GB and failed under 1.0 GB (2026-11-28, warm cache, OpenVINO; a cold cache
imports torch and compiles: 8 GiB, see `MIN_ADDRESS_SPACE`), and below that
OpenBLAS, loaded with scipy, spins for ever retrying an allocation in its initialiser, where
no signal handler of Python's runs, so `timeout` and SIGTERM could not end it. So a run with a
limit below `MIN_ADDRESS_SPACE` is refused before it loads anything (`require_address_space`),
and an allocation that fails during a run is one error naming the limit (`memory_named`), not
a traceback, and not the blame of whatever was being built (a model's encoder name).
CUDA reserves far more address space than it uses: a GPU run wants no limit at all.
"""

from __future__ import annotations

import contextlib
import errno
import resource
from collections.abc import Iterator

from wsi_segment.errors import OutOfMemory, exception_chain

# The CMU slide, warm cache: ran under 1.25 GB. Cold (the graph compiled, torch imported):
# torch's libraries failed to load under 2 GiB; under 4 GiB OpenVINO's PyTorch frontend
# failed, then a thread could not start (its stack is address space); under 8 GiB it ran
MIN_ADDRESS_SPACE = 8 << 30
# what the libraries say when an allocation fails: torch's CPU allocator, C++'s, glibc's
_WORDS = (
    "can't allocate memory",
    "std::bad_alloc",
    "Cannot allocate memory",
    "can't start new thread",  # a thread's stack is address space too
)
_MAP_FAILED = "failed to map segment from shared object"  # the dynamic loader's, as ImportError
LIMIT_FIX = (
    "raise or remove the limit before the run (`ulimit -v unlimited` in the shell or job "
    "script; on SLURM limit memory with --mem, which does not cap address space)"
)
FIX = f"{LIMIT_FIX}, or run fewer slides at once (--concurrency) and fewer --decoders"


def address_space_limit() -> int | None:
    """This process's soft address-space limit in bytes; None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def require_address_space(needed: int = MIN_ADDRESS_SPACE) -> None:
    """Refuse the run, before it loads anything, under an address-space limit below
    `needed`."""
    limit = address_space_limit()
    if limit is not None and limit < needed:
        raise OutOfMemory(
            f"the address-space limit (`ulimit -v`) is {_gib(limit)}, and a run needs at least "
            f"{_gib(needed)} of address space (it maps far more than it uses); {LIMIT_FIX}"
        )


def ran_out(exc: BaseException | None) -> bool:
    """Whether `exc`, its cause or its context is a failed allocation."""
    for error in exception_chain(exc):
        if isinstance(error, MemoryError):
            return True
        if isinstance(error, OSError) and error.errno == errno.ENOMEM:
            return True
        if isinstance(error, RuntimeError) and any(w in str(error) for w in _WORDS):
            return True
        if isinstance(error, ImportError) and _MAP_FAILED in str(error):
            return True
    return False


@contextlib.contextmanager
def memory_named(what: str) -> Iterator[None]:
    """Inside, an error of a failed allocation leaves as `OutOfMemory` naming `what` and, where
    one is set, the address-space limit and its fix."""
    try:
        yield
    except OutOfMemory:
        raise
    except Exception as exc:
        if not ran_out(exc):
            raise
        limit = address_space_limit()
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        if limit is None:
            raise OutOfMemory(
                f"{what}: out of memory ({why}); free memory on this machine, or run fewer "
                "slides at once (--concurrency) and fewer --decoders"
            ) from exc
        raise OutOfMemory(
            f"{what}: out of memory under the address-space limit (`ulimit -v`) of "
            f"{_gib(limit)} ({why}); {FIX}"
        ) from exc


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
