"""A local cluster's worker process ends within the second its nanny asks it to.

When a cluster closes, each nanny asks its worker to close and waits 0.8 x its close
timeout (4 s with the defaults, which closing a local cluster does not let us change) for
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
"""

from __future__ import annotations

import atexit
import gc
from typing import TYPE_CHECKING

from distributed import WorkerPlugin

if TYPE_CHECKING:
    from distributed import Worker


class FreezeAtExit(WorkerPlugin):
    """Registered on a cluster we start (`flows.dask_cluster.dask_client`), so each worker,
    one its nanny restarts included, freezes its objects when its interpreter exits."""

    name = "wsi-segment-freeze-at-exit"

    def setup(self, worker: Worker) -> None:
        atexit.register(gc.freeze)
