"""The Dask clusters we start listen on loopback only and take work only from a client with
their certificate: a Dask worker runs any code sent to it, next to patient slides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from wsi_segment.errors import ConfigError
from wsi_segment.flows.dask_cluster import (
    ClusterPlan,
    connect,
    local_security,
    security_config,
    start_local_cluster,
)


def listening(pids: list[int]) -> set[tuple[int, str]]:
    """(pid, address) of every listening inet socket of these processes."""
    found = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((pid, conn.laddr.ip))
    return found


STRANGERS = """
import json, os, sys
import dask
from distributed import Client
attempts, marker = json.loads(sys.argv[1]), sys.argv[2]
outcomes = {}
for what, (address, config) in attempts.items():
    with dask.config.set(config):
        try:
            client = Client(address, timeout=5)
            client.submit(open, marker, "w").result(timeout=5)
            outcomes[what] = "ran"
        except (OSError, ValueError, TypeError):
            outcomes[what] = "refused"  # the outcome every stranger must get
    outcomes[what] += " and left the marker" if os.path.exists(marker) else ""
print(json.dumps(outcomes))
"""


def strangers_submit(attempts: dict[str, tuple[str, dict]], marker: Path) -> dict[str, str]:
    """Another process (another user's, say) tries to run code on each attempt's address
    with its config, one attempt after another (one interpreter: Dask is imported once);
    what came of each attempt."""
    done = subprocess.run(
        [sys.executable, "-c", STRANGERS, json.dumps(attempts), str(marker)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def tree() -> list[int]:
    me = psutil.Process()
    return [me.pid, *(p.pid for p in me.children(recursive=True))]


@pytest.mark.parametrize(
    "plan",
    # one worker each: every server of the cluster is checked, however many there are
    [ClusterPlan(n_workers=1, threads_per_worker=1), ClusterPlan(1, 1, gpus=(0,))],
    ids=["cpu-local-cluster", "gpu-spec-cluster"],
)
def test_a_local_cluster_listens_on_loopback_and_refuses_clients_without_its_certificate(
    plan: ClusterPlan, tmp_path: Path
) -> None:
    import dask
    from distributed import Client

    before = set(tree())
    security = local_security()
    cluster = start_local_cluster(plan, security=security)
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        with Client(cluster, security=security) as client:
            client.wait_for_workers(plan.n_workers, timeout=60)
            workers = list(client.run(os.getpid).values())
            assert len(workers) == plan.n_workers
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        sockets = listening([os.getpid(), *(set(tree()) - before)])
        # the scheduler's and each worker's (and nanny's) servers, all on loopback
        assert {pid for pid, _ in sockets} >= set(workers)
        assert {ip for _, ip in sockets} == {"127.0.0.1"}, sockets
        assert not set(workers) & before

        marker = tmp_path / "ran"
        strangers = {
            "no certificate": (address, {}),
            "another cluster's certificate": (address, security_config(local_security())),
            "plain tcp": (address.replace("tls://", "tcp://"), {}),
        }
        assert strangers_submit(strangers, marker) == dict.fromkeys(strangers, "refused")
        assert not marker.exists()
        # the same certificate, as the flow in this process gets it (security_config)
        with dask.config.set(security_config(security)), Client(address, timeout=30) as friend:
            assert friend.submit(marker.write_text, "ran").result(timeout=30) == 3
    finally:
        cluster.close()


def test_a_tls_address_without_certificates_is_one_clear_error() -> None:
    import dask

    no_certificates = {k: None for k in security_config(local_security())}
    with dask.config.set(no_certificates), pytest.raises(ConfigError) as caught:
        connect("tls://127.0.0.1:9")
    assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in str(caught.value)
    assert "tls://127.0.0.1:9" in str(caught.value)
    assert os.environ.get("DASK_DISTRIBUTED__COMM__TLS__CA_FILE") is None


def write_certificates(folder: Path) -> dict[str, str]:
    """CA, certificate and key files (as a lab's would be; here one self-signed pair)."""
    security = local_security()
    files = {
        "ca": security.tls_ca_file,
        "cert": security.tls_client_cert,
        "key": security.tls_client_key,
    }
    paths = {}
    for name, pem in files.items():
        path = folder / f"{name}.pem"
        path.write_text(pem)
        path.chmod(0o600)
        paths[name] = str(path)
    return paths


def wait_for_workers(address: str, config: dict[str, object], n: int) -> list[int]:
    import dask
    from distributed import Client

    with dask.config.set(config), Client(address, timeout=60) as client:
        client.wait_for_workers(n, timeout=120)
        return list(client.run(os.getpid).values())


def process_tree(proc: psutil.Process) -> list[int]:
    return [proc.pid, *(p.pid for p in proc.children(recursive=True))]


@pytest.mark.slow
def test_the_hand_started_scheduler_and_worker_of_the_docs_listen_on_loopback_with_tls(
    tmp_path: Path,
) -> None:
    """The commands of docs/deploy.md ("A scheduler and workers you start yourself"), with
    certificate files: every socket on 127.0.0.1 (a `dask worker` given only --host serves
    HTTP on 0.0.0.0), and only a client with the certificate gets work done."""
    import subprocess
    import sys

    import dask
    from distributed import Client

    tls = write_certificates(tmp_path)
    bin_dir = Path(sys.executable).parent
    port = 18786 + os.getpid() % 1000
    tls_args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    scheduler_cmd = [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    scheduler_cmd += ["--dashboard-address", "127.0.0.1:0", "--protocol", "tls", *tls_args]
    address = f"tls://127.0.0.1:{port}"
    worker_cmd = [str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1"]
    worker_cmd += ["--dashboard-address", "127.0.0.1:0", "--nworkers", "1", "--nthreads", "1"]
    worker_cmd += tls_args
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = []
    try:
        for cmd in (scheduler_cmd, worker_cmd):
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        config = {
            "distributed.comm.tls.ca-file": tls["ca"],
            "distributed.comm.tls.client.cert": tls["cert"],
            "distributed.comm.tls.client.key": tls["key"],
        }
        wait_for_workers(address, config, 1)
        pids = [pid for p in procs for pid in process_tree(psutil.Process(p.pid))]
        sockets = listening(pids)
        assert len({pid for pid, _ in sockets}) >= 3  # scheduler, nanny, worker
        assert {ip for _, ip in sockets} == {"127.0.0.1"}, sockets
        marker = tmp_path / "ran"
        with pytest.raises((OSError, ValueError, TypeError)):
            Client(address, timeout=5).submit(marker.write_text, "ran").result(timeout=5)
        assert not marker.exists()
        with dask.config.set(config), Client(address, timeout=30) as friend:
            assert friend.submit(marker.write_text, "ran").result(timeout=30) == 3
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_slurm_recipe_listens_on_loopback_with_tls(tmp_path: Path) -> None:
    """deploy/slurm_dask_jobqueue.py: its scheduler (in this process) and a worker started
    with its job script's own command listen on loopback only, over TLS."""
    import importlib.util
    import subprocess

    pytest.importorskip("dask_jobqueue")
    path = Path(__file__).resolve().parents[2] / "deploy" / "slurm_dask_jobqueue.py"
    spec = importlib.util.spec_from_file_location("slurm_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    cluster = module.make_cluster(
        cores=1, memory="2GiB", gpus=0, shared_temp_directory=str(tmp_path)
    )
    worker = None
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        command = cluster.job_script().strip().splitlines()[-1]
        assert "--host 127.0.0.1 --dashboard-address 127.0.0.1:0" in command
        assert "--tls-ca-file" in command
        env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        worker = subprocess.Popen(
            ["bash", "-c", command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_workers(address, security_config(cluster.security), 1)
        sockets = listening(process_tree(psutil.Process(worker.pid)))
        assert len({pid for pid, _ in sockets}) >= 2  # nanny, worker
        assert {ip for _, ip in sockets} == {"127.0.0.1"}, sockets
        http = cluster.scheduler.http_server
        assert http.address == "127.0.0.1"
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        cluster.close()
