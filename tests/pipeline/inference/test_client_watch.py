"""A wait on a Dask client's futures ends with one ClusterLost naming the cause once the
client cannot deliver them any more: closed under the wait, or its event loop stopped.

A real LocalCluster with a worker process; each test has a client of its own (with its own
event loop), whose futures ask for a resource no worker has, so they stay pending and
occupy no worker.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from wsi_segment.errors import ClusterLost
from wsi_segment.pipeline.inference.band_runner import LOOP_STALL_S, ClientWatch, gather_all
from wsi_segment.pipeline.known_failures import error_class_of, recurs
from wsi_segment.pipeline.progress import NullProgress

pytestmark = pytest.mark.timeout(180)
NEVER = {"resources": {"NO-WORKER-HAS-THIS": 1}, "pure": False}  # a future that stays pending


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.fixture
def client(cluster: Any) -> Iterator[Any]:
    """The process's default client, as a band runner's is."""
    yield from _client(cluster, default=True)


@pytest.fixture
def side_client(cluster: Any) -> Iterator[Any]:
    """A client that is not the process's default: one whose loop a test stops cannot close,
    and as the default it would leave Dask's scheduler setting to later tests' computations."""
    yield from _client(cluster, default=False)


def _client(cluster: Any, default: bool) -> Iterator[Any]:
    """A client of `cluster`; Dask's scheduler setting as it was before it, even when a test
    left the client unable to close (its loop stopped)."""
    import dask
    from distributed import Client

    with dask.config.set(scheduler=dask.config.get("scheduler", None)):
        client = Client(cluster.scheduler_address, set_as_default=default)
        try:
            yield client
        finally:
            try:
                client.close(timeout=5)
            except Exception:  # its loop stopped (the test's doing): nothing can close it
                client.status = "closed"  # nor can its finaliser, in whichever test runs then


def _gather_in_a_thread(client: Any) -> tuple[threading.Thread, list[BaseException | None]]:
    """gather_all over one pending future, waiting in a thread of its own; its outcome."""
    from distributed import Event

    futures = [client.submit(time.sleep, 0, **NEVER)]
    event = Event(f"abort-{uuid.uuid4().hex}", client=client)
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            gather_all(futures, event, NullProgress())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, outcome


def test_a_client_closed_under_a_waiting_gather_ends_it_with_a_cluster_lost(client) -> None:
    thread, outcome = _gather_in_a_thread(client)
    time.sleep(1.0)
    assert thread.is_alive() and outcome == []  # waiting for the band
    client.close()
    thread.join(30)  # without the watch: for ever
    assert not thread.is_alive(), "gather_all still waits on a closed client"
    [error] = outcome
    assert isinstance(error, ClusterLost), error
    assert not recurs(error_class_of(error))  # the cluster's trouble: never a known failure
    # the wait may notice while the close is still under way
    assert re.match(r"the Dask client was closed \(status '(closing|closed)'\) while", str(error))


def test_a_stopped_event_loop_is_noticed_within_the_stall_bound(side_client) -> None:
    """The loop's thread ends while the client still says "running": the watch's callback
    never runs, and after `stall_s` the wait ends with the cause named."""
    future = side_client.submit(time.sleep, 0, **NEVER)
    watch = ClientWatch(future.client, stall_s=1.0)
    for _ in range(5):  # a live loop answers every callback
        watch.check()
        time.sleep(0.1)
    side_client.loop.add_callback(side_client.loop.stop)
    started = time.monotonic()
    with pytest.raises(ClusterLost, match="event loop has not turned for 1 s") as info:
        while time.monotonic() - started < 30:
            watch.check()
            time.sleep(0.1)
    assert 1.0 <= time.monotonic() - started < 5
    assert side_client.status == "running"  # the client itself never noticed
    with pytest.raises(ClusterLost) as again:  # it stays gone
        watch.check()
    assert again.value is info.value and watch.cause() is info.value


@pytest.mark.slow  # the watch's whole stall bound
def test_a_gather_whose_client_loop_stopped_ends_with_a_cluster_lost(client) -> None:
    """Without the watch this wait never ends: the future cannot complete once the loop that
    would deliver it has stopped, and the client still says "running"."""
    thread, outcome = _gather_in_a_thread(client)
    time.sleep(1.0)
    client.loop.add_callback(client.loop.stop)
    thread.join(LOOP_STALL_S + 30)
    assert not thread.is_alive(), "gather_all still waits on a stopped event loop"
    [error] = outcome
    assert isinstance(error, ClusterLost), error
    assert f"event loop has not turned for {LOOP_STALL_S:g} s" in str(error)
