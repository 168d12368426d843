"""The Prefect flow's slide threads: a task runner whose threads cannot hold the process.

`SlideTaskRunner` is Prefect's `ThreadPoolTaskRunner` on `flows.daemon_threads`'
`DaemonThreadExecutor`: left on an exception (an interrupt, after the batch has given its
slides `flows.batch_interrupt.GRACE_S` to stop), it does not wait for a slide thread that
has not ended (see that module for why).
"""

from __future__ import annotations

from typing import Any, Generic, Self, TypeVar

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from wsi_segment.flows.daemon_threads import DaemonThreadExecutor  # noqa: E402

R = TypeVar("R")


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
