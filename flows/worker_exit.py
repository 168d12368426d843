"""A local cluster's worker process ends within the second its nanny asks it to, and its
nanny waits for it long enough on a loaded machine.

When a cluster closes, each nanny asks its worker to close and waits 0.8 x its close
timeout (4 s with the 5 s a cluster's close uses, which no setting changes) for
the process to end, then kills it with the warning "Worker process still alive after 4.0
seconds, killing". Our workers close in well under a second; what took the rest was the
interpreter's own exit after that: a worker that ran a band has imported torch, timm and
the model's runtime (some 3,600 modules, 450,000 objects), and CPython's finalisation
clears every module and runs full garbage collections over all of them: 3 to 4 s of CPU
on a busy 2-core machine, measured in the worker (`gc_collect_main` with no Python frame
left), so most batches ended with that warning, successful ones included.

`FreezeAtExit` makes each worker move its objects into the collector's permanent
generation (`gc.freeze`) at interpreter exit, so finalisation no longer traverses them: the
same worker then ends about a second after the close starts. Nothing is lost: the process
is ending and its memory goes back to the system as a whole; by then every band has
returned, so its zarr writes, decoder processes and shared memory are already closed by
the code that owns them, not left to a garbage collection at exit.

On a loaded machine even that second of CPU can take longer than the nanny's 4 s: a worker
given a twelfth of a core needs twelve. So a cluster whose run ended normally is closed
through `close_workers`, which gives each nanny `WORKER_CLOSE_S` (0.8 x that before the
kill) instead of the 5 s a cluster's close gives it; a worker that really hangs is still
killed, later. A cluster left on an exception (an interrupt, a crash) keeps Dask's own
bound: a stop should be prompt, and a worker still busy with a cancelled band is meant to
end as if killed.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
from typing import TYPE_CHECKING

from distributed import Nanny, WorkerPlugin

if TYPE_CHECKING:
    from distributed import SpecCluster, Worker

# Seconds a nanny gives its worker to close and exit at the end of a run (it kills it after
# 0.8 x this): room for a worker's exit on a machine loaded twenty-fold, not a wait anyone
# sees, as a worker that exits returns at once.
WORKER_CLOSE_S = 30.0


class FreezeAtExit(WorkerPlugin):
    """Registered on a cluster we start (`flows.dask_cluster.dask_client`), so each worker,
    one its nanny restarts included, freezes its objects when its interpreter exits."""

    name = "wsi-segment-freeze-at-exit"

    def setup(self, worker: Worker) -> None:
        atexit.register(gc.freeze)


def close_workers(cluster: SpecCluster, timeout_s: float) -> None:
    """Close each worker of `cluster` through its nanny, which waits up to 0.8 x `timeout_s`
    for the worker process to end before it kills it ("Worker process still alive after
    ... seconds, killing"). The cluster's own close then finds its nannies closed."""

    async def close_all() -> None:
        nannies = [w for w in cluster.workers.values() if isinstance(w, Nanny)]
        await asyncio.gather(*(n.close(timeout=timeout_s, reason="run-ended") for n in nannies))

    cluster.sync(close_all)
