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
own, each read by a small relay process that copies what it reads to the worker's pipe while
the worker reads it, and drops it once nobody does. Every writer (Python, `rich`, C libraries,
and the Dask worker and decoder processes, which inherit the descriptors) then writes into a
pipe that never breaks while the run lives. The run finishes its night; its log lines still
reach the server through Prefect's API log handler. A process, not a thread: a run stopped by
SIGTERM dies by the signal (Prefect re-sends it once the run is Crashed), and what it wrote
last, its final state among it, is still in the pipe; the relay copies it and ends when every
process that holds the pipe has.
"""

from __future__ import annotations

import os
import subprocess
import sys

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect.context import FlowRunContext  # noqa: E402

# The relay: copy stdin to stdout until every writer has closed the pipe; after the first
# failed write (the reader is gone), read on and drop, so that writers never block or fail.
RELAY = """
import os
target_open = True
while data := os.read(0, 65536):
    while target_open and data:
        try:
            data = data[os.write(1, data):]
        except OSError:
            target_open = False
"""


def relay_output(fds: tuple[int, ...] = (1, 2)) -> list[subprocess.Popen[bytes]]:
    """Relay each of `fds` (default stdout and stderr) through a pipe read by a relay
    process, for the rest of this process's life and beyond, until the pipe's last writer
    ends. Each relay runs in a session of its own, so a signal to this run's process group
    does not end it before the run's last lines; a signal sent to it alone (systemd stopping
    what is left of a unit) does."""
    relays = []
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:  # not open: nothing to outlive
            continue
        # what Python holds goes out before what is written after
        (sys.stdout if fd == 1 else sys.stderr).flush()
        read_end, write_end = os.pipe()
        try:
            relay = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", RELAY],
                stdin=read_end,
                stdout=fd,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        os.dup2(write_end, fd)  # inheritable: child processes write into the relay too
        os.close(write_end)
        relays.append(relay)
    return relays


def outlive_worker_pipes() -> list[subprocess.Popen[bytes]]:
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
