"""The batch's slide threads: a Prefect task runner whose threads cannot hold the process.

A batch runs each slide in a thread of its process (`flows.batch_flow`), and an interrupt
cancels the slide's token, which its code checks in its waits (`flows.slide_watch`). A
thread blocked in C (a read from a hung file system, a driver call) never checks it, and Prefect's
`ThreadPoolTaskRunner` would wait for it without limit twice: on leaving the runner
(`shutdown(wait=True)`) and when the interpreter exits (the non-daemon threads of every
`ThreadPoolExecutor` are joined). `SlideTaskRunner` runs the slide tasks in daemon threads
and, when the runner is left on an exception (an interrupt, after the batch has given its
slides `flows.batch_interrupt.GRACE_S` to stop), does not wait for them: the batch reports
and exits, and a slide still stuck is ended with the process, as if killed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, Self, TypeVar

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

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


class SlideTaskRunner(ThreadPoolTaskRunner[R], Generic[R]):
    """`ThreadPoolTaskRunner` on `DaemonThreadExecutor`; left on an exception (an
    interrupt: the slides were already stopped and given their grace), it does not wait
    for a slide thread that has not ended."""

    def __enter__(self) -> Self:
        super().__enter__()
        assert self._executor is not None
        self._executor.shutdown(wait=False)  # Prefect's own: no thread started yet
        self._executor = DaemonThreadExecutor(self._max_workers, self._register_worker_thread)
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if exc_type is not None and self._executor is not None:
            for event in self._cancel_events.values():
                event.set()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        super().__exit__(exc_type, exc_value, traceback)
