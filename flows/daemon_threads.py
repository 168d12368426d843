"""Daemon threads for a batch's slides: a thread stuck in C cannot hold the process.

A batch runs each slide in a thread of its process (`flows.batch_loop`), and an interrupt
cancels the slide's token, which its code checks in its waits (`flows.slide_watch`). A
thread blocked in C (a read from a hung file system, a driver call) never checks it, and a
`ThreadPoolExecutor` would wait for it without limit twice: on leaving the executor
(`shutdown(wait=True)`) and when the interpreter exits (the non-daemon threads of every
`ThreadPoolExecutor` are joined). `DaemonThreadExecutor` runs the slides in daemon threads
and, left on an exception (an interrupt, after the batch has given its slides
`flows.batch_interrupt.GRACE_S` to stop), is not waited for (`daemon_pool`): the batch
reports and exits, and a slide still stuck is ended with the process, as if killed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

R = TypeVar("R")
_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadExecutor(ThreadPoolExecutor):
    """At most `max_workers` calls at a time, each in a daemon thread that nothing joins
    unless `shutdown(wait=True)` asks. A `ThreadPoolExecutor` by type (what Prefect's runner
    holds); its own thread machinery stays unused (it starts threads only on its `submit`)."""

    def __init__(self, max_workers: int, initializer: Callable[[], object] | None = None) -> None:
        super().__init__(max_workers=max_workers)
        self._size = max_workers
        self._init = initializer
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._state = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        future: Future[R] = Future()
        with self._state:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._calls.put((future, fn, args, kwargs))
            if len(self._workers) < self._size:
                name = f"slide-{len(self._workers)}"
                thread = threading.Thread(target=self._work, name=name, daemon=True)
                thread.start()
                self._workers.append(thread)
        return future

    def _work(self) -> None:
        if self._init is not None:
            self._init()
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the future carries it, as ThreadPoolExecutor's do
                future.set_exception(exc)
            else:
                future.set_result(result)
            del call, future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; `cancel_futures`: drop those not started; `wait`: join the
        threads (each ends after its current call)."""
        with self._state:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        call = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if call is not None:
                        call[0].cancel()
            for _ in self._workers:
                self._calls.put(None)
            workers = list(self._workers)
        super().shutdown(wait=False)
        if wait:
            for thread in workers:
                thread.join()


@contextlib.contextmanager
def daemon_pool(max_workers: int) -> Iterator[DaemonThreadExecutor]:
    """A `DaemonThreadExecutor` for the block: joined when the block ends normally; left on
    an exception with its calls not started cancelled, and its threads not waited for."""
    pool = DaemonThreadExecutor(max_workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
