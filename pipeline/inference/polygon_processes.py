"""Polygon processes: the writer's finisher threads trace and simplify each block's polygons
(`chunk_summary.block_polygons`) in worker processes instead of in their own thread.

Why: tracing holds the GIL for much of its time (rasterio's `shapes` yields a Python dict per
region; the loops around it are Python), so threads barely scale (benchmarks/writer.py). A
finisher sends the block's labels to an idle process and waits on the pipe (the GIL released);
the result is the same function's, so the same bytes.

Each worker is a fresh interpreter (`python -m` this module: nothing forked from a process
holding CUDA, no main script imported again) in a process group of its own, so a terminal's
Ctrl-C or a `kill` of the run's group never reaches it, even while it starts (a signal then
would end it with a "Fatal Python error"); it ignores SIGINT, SIGTERM and SIGHUP all the same
(a scheduler may signal every process of a job). It holds only its own ends of its two pipes,
so when the run closes them, or the run's process dies however it dies, it exits.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
from multiprocessing.connection import Connection

import numpy as np

from wsi_segment.errors import PolygonProcessDied, WsiSegmentError
from wsi_segment.pipeline.inference.engine_state import picklable, wait_uninterrupted
from wsi_segment.pipeline.outputs.chunk_summary import block_polygons
from wsi_segment.wsi.tiling import ChunkSpec

JOIN_S = 5.0  # a worker told to end finishes the block it traces first
Reply = dict[int, list[bytes]] | BaseException  # a block's polygons, or its error


class PolygonProcesses:
    """`processes` worker processes; `block_polygons` is `chunk_summary.block_polygons` run in
    an idle one, callable from any number of threads. Close it (idempotent) on every path."""

    def __init__(self, processes: int) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._sends: list[Connection] = []
        self._replies: list[Connection] = []
        self._idle: queue.Queue[int] = queue.Queue()
        try:
            for n in range(processes):
                self._start(n)
        except BaseException:
            self.close()
            raise

    def _start(self, n: int) -> None:
        """Worker `n`, with a pipe each way; the parent keeps only its own two ends."""
        to_worker, from_worker = os.pipe(), os.pipe()
        theirs = (to_worker[0], from_worker[1])
        command = [sys.executable, "-P", "-m", __name__, *map(str, theirs)]  # -P: no cwd modules
        try:
            proc = subprocess.Popen(
                command, pass_fds=theirs, process_group=0, stdin=subprocess.DEVNULL
            )
        except BaseException:
            for fd in (*to_worker, *from_worker):
                os.close(fd)
            raise
        # recorded first: an interrupt from here on still finds it for `close`
        self._procs.append(proc)
        self._sends.append(Connection(to_worker[1], readable=False))
        self._replies.append(Connection(from_worker[0], writable=False))
        for fd in theirs:
            os.close(fd)
        self._idle.put(n)

    def block_polygons(
        self, spec: ChunkSpec, labels: np.ndarray, k: int, tolerance: float, cell: int
    ) -> dict[int, list[bytes]]:
        """`chunk_summary.block_polygons(spec, labels, k, tolerance, cell)`, in a process."""
        n = self._idle.get()
        answered = False
        try:
            self._sends[n].send((spec, labels, k, tolerance, cell))
            reply: Reply = self._replies[n].recv()
            answered = True
        except (EOFError, OSError) as exc:
            code = self._procs[n].poll()
            raise PolygonProcessDied(
                f"polygon process {n} ended during a run (exit code {code}): a kill from "
                "outside or memory running out; run again"
            ) from exc
        finally:
            if not answered:  # a reply may be left unread: the worker serves no one again
                self._sends[n].close()
                self._replies[n].close()
            self._idle.put(n)  # dead or alive: a thread waiting for it must not wait forever
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def close(self) -> None:
        """Close every pipe (a worker reads end of file and exits), then wait for the workers,
        killing any that does not end. A second interrupt here does not skip the rest."""
        for link in (*self._sends, *self._replies):
            link.close()
        stops: list[BaseException | None] = []
        for proc in self._procs:
            stops.append(wait_uninterrupted(_wait, proc, JOIN_S))
            if proc.poll() is None:
                proc.kill()
                stops.append(wait_uninterrupted(proc.wait))
        self._procs, self._sends, self._replies = [], [], []
        # stopped from outside while joining: raised after cleanup
        if (first_stop := next((s for s in stops if s is not None), None)) is not None:
            raise first_stop


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to `timeout` s for `proc` to end (`close` kills it if it has not)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


def polygon_worker_main(requests: Connection, replies: Connection) -> None:
    """Process body: trace each block sent until the pipe closes; an error is the reply
    (the run raises it where the thread would have), never ends the worker."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    while True:
        try:
            spec, labels, k, tolerance, cell = requests.recv()
        except (EOFError, OSError):
            return
        try:
            reply: Reply = block_polygons(spec, labels, k, tolerance, cell)
        except Exception as exc:
            failed = WsiSegmentError(f"tracing a block's polygons failed: {exc!r}")
            reply = picklable(exc, failed)
        try:
            replies.send(reply)
        except (EOFError, OSError):
            return


if __name__ == "__main__":  # a worker: python -m this module READ_FD WRITE_FD
    polygon_worker_main(
        Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    )
