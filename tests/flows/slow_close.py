"""A worker plugin that makes a Dask worker slow to close, in a module light enough for a
worker process to import when it unpickles the plugin."""

from __future__ import annotations

import time

from distributed import Worker, WorkerPlugin

SLOW_CLOSE_S = 5.0  # past the 4 s a cluster's own close lets a nanny wait (0.8 x 5 s)


class SlowClose(WorkerPlugin):
    """A worker that takes SLOW_CLOSE_S to close, as one does on a machine so loaded that
    its exit gets a sliver of a core."""

    name = "test-slow-close"

    def teardown(self, worker: Worker) -> None:
        time.sleep(SLOW_CLOSE_S)
