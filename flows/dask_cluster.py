"""Where a batch's chunk work runs: a local Dask cluster sized to the machine, or a scheduler.

Prefect tasks (one per slide per stage) stay in the flow process; the tile chunks of every
slide go to Dask. Workers are processes, so each loads the model once and a worker that
dies has its band of chunks recomputed elsewhere by the scheduler. Sizing: one worker per
GPU (each pinned to its device with CUDA_VISIBLE_DEVICES), else one CPU worker running one
band of the engine per thread, the cores shared out between them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsi_segment.errors import ConfigError
from wsi_segment.flows.allocator import worker_environment
from wsi_segment.pipeline.machine import probe_machine

if TYPE_CHECKING:  # distributed is imported when a cluster is used
    from distributed import Client, SpecCluster


@dataclass(frozen=True)
class ClusterPlan:
    """How many worker processes, threads each, and the GPU index of each worker (if any)."""

    n_workers: int
    threads_per_worker: int
    gpus: tuple[int, ...] = ()


def plan_local_cluster(
    workers: int | None = None,
    threads: int | None = None,
    *,
    n_gpus: int | None = None,
    n_cpus: int | None = None,
) -> ClusterPlan:
    """Size a local cluster: one worker per GPU, else `workers` (default 1) CPU workers.

    `threads` defaults to the cores shared out between workers, at least 2 per worker: each
    thread runs one band of the engine (its reader thread and its forward passes), so two
    keep a core busy while one band's reader waits.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {workers})")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads per worker must be >= 1 (got {threads})")
    cpus = n_cpus if n_cpus is not None else (os.cpu_count() or 1)
    gpus = len(probe_machine().gpus) if n_gpus is None else n_gpus
    if gpus > 0:
        n = min(workers, gpus) if workers else gpus
        per = threads or max(2, cpus // n)
        return ClusterPlan(n_workers=n, threads_per_worker=per, gpus=tuple(range(n)))
    n = workers or 1
    per = threads or max(2, cpus // n)
    return ClusterPlan(n_workers=n, threads_per_worker=per)


# The scheduler always runs an HTTP server (health, metrics, and the dashboard if shown).
# `dashboard_address=None` does not turn it off: the Scheduler then binds its default :8787
# (and warns "Port 8787 is already in use" when another cluster or service has it). "Off"
# is therefore a free loopback port with `dashboard=False`, so no dashboard pages are served.
DASHBOARD_ON = ":8787"
# A local cluster serves this machine only: scheduler and workers listen on loopback
# (LocalCluster does so by itself; the GPU SpecCluster is told), never on every interface.
LOOPBACK = "127.0.0.1"
DASHBOARD_OFF = "127.0.0.1:0"
# Each band of the engine starts decoder processes on its worker, and a daemonic
# process may not start processes; Dask starts workers daemonic by default. A nanny reads
# this setting each time it (re)starts its worker, in the process that holds the cluster,
# so `dask_client` keeps it set while its cluster runs (a worker restarted after a crash
# included). Workers started elsewhere: DASK_DISTRIBUTED__WORKER__DAEMON=False.
WORKERS_NOT_DAEMONIC = {"distributed.worker.daemon": False}


def start_local_cluster(plan: ClusterPlan, dashboard: bool = False) -> SpecCluster:
    """Start worker processes for `plan` (GPU workers get their own CUDA_VISIBLE_DEVICES).

    Workers start non-daemonic (`WORKERS_NOT_DAEMONIC`; hold that setting while the cluster
    runs for restarted workers to be so too). The Dask dashboard is off unless `dashboard`
    (then on :8787, all interfaces).
    """
    import dask

    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 so they hand memory back
    # eagerly; for our forward passes that cost 50 % of the speed (1770 tiles: 66 -> 99 s,
    # benchmarks/RESULTS.md). Two arenas keep RSS low instead. glibc reads its variables at
    # process start, so they go in the environment the nanny spawns workers with (a nanny's
    # `env` is only applied inside the worker, too late for malloc).
    key = "distributed.nanny.pre-spawn-environ"
    spawn_env: dict[str, str | None] = {f"{key}.MALLOC_TRIM_THRESHOLD_": None}
    spawn_env.update({f"{key}.{k}": v for k, v in worker_environment().items()})
    with dask.config.set({**spawn_env, **WORKERS_NOT_DAEMONIC}):
        return _start_local_cluster(plan, dashboard)


def _start_local_cluster(plan: ClusterPlan, dashboard: bool) -> SpecCluster:
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    dashboard_address = DASHBOARD_ON if dashboard else DASHBOARD_OFF
    if not plan.gpus:
        return LocalCluster(
            n_workers=plan.n_workers,
            threads_per_worker=plan.threads_per_worker,
            processes=True,
            host=LOOPBACK,
            dashboard_address=dashboard_address,
            scheduler_kwargs={"dashboard": dashboard},
        )
    workers = {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": plan.threads_per_worker,
                "host": LOOPBACK,
                "env": {"CUDA_VISIBLE_DEVICES": str(gpu)},
                "resources": {"GPU": 1},
            },
        }
        for gpu in plan.gpus
    }
    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": LOOPBACK,
            "dashboard_address": dashboard_address,
            "dashboard": dashboard,
        },
    }
    return SpecCluster(workers=workers, scheduler=scheduler)


@contextmanager
def dask_client(
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
) -> Iterator[Client]:
    """A Dask client for a run: connect to `address`, or start (and stop) a local cluster.

    A local cluster's workers are non-daemonic for its whole life (`WORKERS_NOT_DAEMONIC`:
    bands of the engine start decoder processes on them). A remote cluster is left
    running at exit; only our connection closes.
    """
    from distributed import Client

    if address:
        try:
            client = Client(address, timeout="30s")
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {address} ({exc}); check --dask-address "
                "(e.g. tcp://host:8786) and that the scheduler is running"
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    with dask.config.set(WORKERS_NOT_DAEMONIC):
        cluster = start_local_cluster(plan_local_cluster(workers, threads))
        try:
            client = Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
