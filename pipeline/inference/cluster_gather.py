"""Waiting for a slide's tasks on a Dask cluster: every one ends before the first failure is
raised.

Cancelling futures would not stop a task already running on a worker, and it would write
into a folder the caller removes on error. So a failure sets the slide's cluster-wide abort
event (tasks not yet started return at once, running engines stop) and the caller still waits
for every future (`band_runner.run_bands`). An interrupt (Ctrl-C, or a
batch stopping a slide over its time limit) waits only `STOP_GRACE_S` for the running tasks,
so a task stuck on a worker cannot hold the interrupt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Event, Future

STOP_GRACE_S = 10.0


def gather_all(
    futures: Sequence[Future[Any]],
    event: Event,
    on_result: Callable[[int, Any], BaseException | None],
) -> None:
    """Hand each future's value to `on_result` (with its index in `futures`) as it completes;
    the first failure (a raised exception, or the error `on_result` returns) sets `event` and
    is raised once every future has ended. An interrupt while waiting sets `event` too."""
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    error: BaseException | None = None
    try:
        for future in as_completed(futures):
            try:
                failure = on_result(index[future.key], future.result())
            except Exception as exc:  # first failure wins; the others are its echoes
                failure = exc
            if failure is not None and error is None:
                error = failure
                event.set()
    except BaseException:  # interrupted while waiting: started tasks finish, no new ones
        event.set()
        _wait_briefly(futures)
        raise
    event.clear()  # frees the event on the scheduler
    if error is not None:
        raise error


def _wait_briefly(futures: Sequence[Future[Any]]) -> None:
    """Wait up to STOP_GRACE_S for the running tasks (they stop early once the abort event
    is set), so they do not write into a folder the caller is about to remove."""
    from distributed import wait

    # timed out, or the cluster is going away: the interrupt goes on
    with contextlib.suppress(Exception):
        wait(list(futures), timeout=STOP_GRACE_S)
