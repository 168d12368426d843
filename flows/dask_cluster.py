"""Where a batch's chunk work runs: a local Dask cluster sized to the machine, or a scheduler.

Prefect tasks (one per slide per stage) stay in the flow process; the tile chunks of every
slide go to Dask. Workers are processes, so each loads the model once and a worker that
dies has its band of chunks recomputed elsewhere by the scheduler. Sizing: one worker per
GPU (each pinned to its device with CUDA_VISIBLE_DEVICES), else one CPU worker running one
band of the engine per thread, the cores shared out between them.

A Dask worker runs any code sent to it, in a process that reads patient slides, so nothing
we start listens beyond loopback, and every connection is TLS with certificates: a local
cluster makes its own (`distributed.security.Security.temporary`, held in memory, gone with the cluster), and a
remote scheduler (`tls://host:8786`) is reached with the lab's certificates from Dask's
configuration (`distributed.comm.tls.*`: a YAML file or DASK_DISTRIBUTED__COMM__TLS__*
variables). A client without the certificate cannot submit work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsi_segment.errors import ConfigError
from wsi_segment.flows.allocator import worker_environment
from wsi_segment.pipeline.machine import probe_machine

if TYPE_CHECKING:  # distributed is imported when a cluster is used
    from distributed import Client, Security, SpecCluster

TLS = "tls://"
# Where Dask reads the certificates of a client (this process) for a tls:// scheduler.
TLS_CLIENT_CONFIG = (
    "distributed.comm.tls.ca-file",
    "distributed.comm.tls.client.cert",
    "distributed.comm.tls.client.key",
)


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
    if n_cpus is None or n_gpus is None:  # this machine as a run sees it (affinity, quota)
        machine = probe_machine()
        n_cpus = machine.cores if n_cpus is None else n_cpus
        n_gpus = len(machine.gpus) if n_gpus is None else n_gpus
    cpus, gpus = n_cpus, n_gpus
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
# Each worker serves HTTP too (health, metrics); with a bare port it listens on 0.0.0.0.
WORKER_HTTP = "127.0.0.1:0"
# Each band of the engine starts decoder processes on its worker, and a daemonic
# process may not start processes; Dask starts workers daemonic by default. A nanny reads
# this setting each time it (re)starts its worker, in the process that holds the cluster,
# so `dask_client` keeps it set while its cluster runs (a worker restarted after a crash
# included). Workers started elsewhere: DASK_DISTRIBUTED__WORKER__DAEMON=False.
WORKERS_NOT_DAEMONIC = {"distributed.worker.daemon": False}


def local_security() -> Security:
    """Certificates for a local cluster: made now, in memory, valid for this cluster only."""
    from distributed import Security

    try:
        security: Security = Security.temporary()
    except ImportError as exc:
        raise ConfigError(
            "a local Dask cluster is started with TLS certificates, which needs the "
            "'cryptography' package: pip install cryptography"
        ) from exc
    return security


def security_config(security: Security) -> dict[str, object]:
    """Dask configuration that makes a client in this process use `security` (e.g. a flow
    given the address of a cluster this process started with temporary certificates)."""
    # Security sets its tls_* fields in __init__ from a table mypy does not see
    return {
        "distributed.comm.tls.ca-file": getattr(security, "tls_ca_file"),  # noqa: B009
        "distributed.comm.tls.client.cert": getattr(security, "tls_client_cert"),  # noqa: B009
        "distributed.comm.tls.client.key": getattr(security, "tls_client_key"),  # noqa: B009
        "distributed.comm.require-encryption": True,
    }


def start_local_cluster(
    plan: ClusterPlan, dashboard: bool = False, security: Security | None = None
) -> SpecCluster:
    """Start worker processes for `plan` (GPU workers get their own CUDA_VISIBLE_DEVICES),
    every server on loopback and every connection TLS (`security`, default: temporary).

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
        return _start_local_cluster(plan, dashboard, security or local_security())


def _start_local_cluster(plan: ClusterPlan, dashboard: bool, security: Security) -> SpecCluster:
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    dashboard_address = DASHBOARD_ON if dashboard else DASHBOARD_OFF
    if not plan.gpus:
        return LocalCluster(
            n_workers=plan.n_workers,
            threads_per_worker=plan.threads_per_worker,
            processes=True,
            host=LOOPBACK,
            protocol=TLS,
            security=security,
            dashboard_address=dashboard_address,
            worker_dashboard_address=WORKER_HTTP,
            scheduler_kwargs={"dashboard": dashboard},
        )
    workers = {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": plan.threads_per_worker,
                "host": LOOPBACK,
                "protocol": TLS,
                "security": security,
                "dashboard_address": WORKER_HTTP,
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
            "protocol": TLS,
            "security": security,
            "dashboard_address": dashboard_address,
            "dashboard": dashboard,
        },
    }
    return SpecCluster(workers=workers, scheduler=scheduler, security=security)


@contextmanager
def dask_client(
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
) -> Iterator[Client]:
    """A Dask client for a run: connect to `address`, or start (and stop) a local cluster.

    A local cluster's workers are non-daemonic for its whole life (`WORKERS_NOT_DAEMONIC`:
    bands of the engine start decoder processes on them), and its temporary certificates
    are this process's Dask client configuration meanwhile (`security_config`). A remote
    cluster is left running at exit; only our connection closes. A local cluster's workers
    end within the nanny's close timeout (`flows.worker_exit.FreezeAtExit`), which after a
    block that ended normally is `flows.worker_exit.WORKER_CLOSE_S` (`close_workers`).
    """
    from distributed import Client

    if address:
        client = connect(address)
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    from wsi_segment.flows.worker_exit import WORKER_CLOSE_S, FreezeAtExit, close_workers

    security = local_security()
    # while it runs, a client of this process given its address (a flow, a test) has its key
    with dask.config.set({**WORKERS_NOT_DAEMONIC, **security_config(security)}):
        cluster = start_local_cluster(plan_local_cluster(workers, threads), security=security)
        try:
            client = Client(cluster, security=security)
            try:
                client.register_plugin(FreezeAtExit())  # workers end in time at close
                yield client
            finally:
                client.close()
            # a run that ended: room for a loaded machine (on an exception: Dask's 5 s)
            close_workers(cluster, WORKER_CLOSE_S)
        finally:
            cluster.close()


def connect(address: str) -> Client:
    """A client of the scheduler at `address`, with the certificates Dask's configuration
    names (`TLS_CLIENT_CONFIG`) for a tls:// one; a clear error when it cannot connect."""
    import dask
    from distributed import Client

    if address.startswith(TLS) and not all(dask.config.get(k, None) for k in TLS_CLIENT_CONFIG):
        raise ConfigError(
            f"the Dask scheduler at {address} needs TLS certificates and none are configured; "
            "set DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT "
            "and DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (or distributed.comm.tls in a Dask "
            "config file) to the lab's CA, certificate and key (docs/deploy.md)"
        )
    try:
        return Client(address, timeout="30s")
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address} ({exc}); check --dask-address "
            "(e.g. tls://host:8786), that the scheduler is running, and for tls:// that this "
            "machine has the lab's certificates (docs/deploy.md)"
        ) from exc
