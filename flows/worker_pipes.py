"""A deployed flow run's output outlives the worker that started it.

A Prefect process worker starts each flow run as a child process whose stdout and stderr are
pipes the worker reads (it copies them into its own log). Killed alone (the OOM killer picks
one process; a worker started by hand, under tmux or a supervisor without cgroups), the worker
leaves the run alive, as Prefect means it to, writing into pipes nobody reads any more: each
write fails with EPIPE. Python's own stream handlers drop such a write, but Prefect's console
log handler prints through `rich`, whose console turns a broken pipe into `SystemExit` in
whichever thread logged. In the Dask client's event-loop thread that ends the loop: every later
Dask call of the run fails ("IOLoop is closed"), the cluster can no longer be closed, and the
process waits at exit for its Dask worker process for ever, holding the deployment's slot.

So a deployed run's process gives its stdout and stderr (file descriptors 1 and 2) pipes of its
own, each read by a relay thread that copies what it reads to the worker's pipe while the
worker reads it, and drops it once nobody does. Every writer (Python, `rich`, C libraries, and
the Dask worker and decoder processes, which inherit the descriptors) then writes into a pipe
that this process reads for as long as it lives. The run finishes its night; its log lines
still reach the server through Prefect's API log handler.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect.context import FlowRunContext  # noqa: E402

READ_SIZE = 65536
DRAIN_S = 1.0  # at exit, the most we wait for what the relays still hold to be written


class OutputRelay:
    """Descriptor `fd` (1 or 2) made a pipe of this process, copied to what `fd` was before
    (`target`) by a daemon thread while `target` takes writes, dropped after."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.target = os.dup(fd)  # not inheritable: only the relay writes to the worker's pipe
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)  # inheritable: child processes write into the relay too
        os.close(write_end)
        self._read_end = read_end
        self.target_open = True  # False once a write to `target` failed: nobody reads it
        self.thread = threading.Thread(target=self._copy, name=f"output-relay-{fd}", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        """Copy until every writer has closed the pipe; after the first failed write (the
        reader is gone), read on and drop, so that writers never block or fail."""
        while data := os.read(self._read_end, READ_SIZE):
            self.target_open = self.target_open and write_all(self.target, data)
        os.close(self._read_end)

    def restore(self) -> bool:
        """Put `target` back on `fd` if it is still read (True): this process stops writing
        to the relay, which copies what it holds and ends once no child process holds the
        pipe either. A `target` nobody reads stays behind the relay to the end."""
        with contextlib.suppress(ValueError, OSError):  # a stream already closed at exit
            (sys.stdout if self.fd == 1 else sys.stderr).flush()
        if not self.target_open:
            return False
        os.dup2(self.target, self.fd)
        return True

    def join(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic) for the relay to end; a child process still
        alive (multiprocessing's resource tracker, until this process exits) keeps it going,
        and what it writes later is copied while this process lives."""
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if not self.thread.is_alive():
            os.close(self.target)


def write_all(fd: int, data: bytes) -> bool:
    """Write all of `data` to `fd`; False if a write fails (a pipe whose reader is gone)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError:
            return False
    return True


def relay_output(fds: tuple[int, ...] = (1, 2)) -> list[OutputRelay]:
    """Relay each of `fds` (default stdout and stderr) through a pipe of this process, for
    the rest of its life; at exit they are put back and given `DRAIN_S`, all together, to
    copy what they hold."""
    relays = []
    for fd in fds:
        try:
            relays.append(OutputRelay(fd))
        except OSError:  # not open: nothing to outlive
            continue
    atexit.register(restore_all, relays)
    return relays


def restore_all(relays: list[OutputRelay]) -> None:
    """Put every relayed descriptor that is still read back, then wait up to `DRAIN_S` for
    their relays."""
    restored = [relay for relay in relays if relay.restore()]
    deadline = time.monotonic() + DRAIN_S
    for relay in restored:
        relay.join(deadline)


def outlive_worker_pipes() -> list[OutputRelay]:
    """Relay stdout and stderr when this flow run is a deployment's top-level run, the run
    a worker (or `flow.serve`) started in a process of its own with its pipes; elsewhere
    (a flow called by `wsi-segment batch`, a script, a test, a subflow) nothing changes.
    Call it first thing in a flow that a deployment may run."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.deployment_id is None:
        return []
    if ctx.flow_run.parent_task_run_id is not None:
        return []
    return relay_output()
