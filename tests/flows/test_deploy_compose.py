"""deploy/docker-compose.yml's Dask services, their commands run as written in a network of
their own: they start with the lab's certificates, listen on the stack's network only, and
take work only from a client with the certificate.

Compose itself cannot run here (no Compose v2, no registry for the postgres image), so the
scheduler's and the GPU worker's `command` run verbatim in new network, UTS and mount
namespaces that look like their containers: one interface `eth0` besides loopback, the
hostname `dask-scheduler` resolving to it, and the certificate files where the compose file
mounts them. Only the ports' publishing on the host's loopback stays untested (docker does it).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.flows.test_dask_security import write_certificates

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "docker-compose.yml"
STACK_IP = "10.77.0.2"  # eth0 of the stack's network, as docker would give a container
TLS_DIR = "/etc/dask-tls"  # where the compose file mounts the lab's certificates
NO_VETH = 77  # the script's exit status where the kernel cannot make a veth pair

CHECK = """
import json, os, sys, time
import dask, psutil
from distributed import Client
tls, marker, pids = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
address = "tls://dask-scheduler:8786"
config = {
    "distributed.comm.tls.ca-file": tls["ca"],
    "distributed.comm.tls.client.cert": tls["cert"],
    "distributed.comm.tls.client.key": tls["key"],
}
with dask.config.set(config), Client(address, timeout=60) as friend:
    friend.wait_for_workers(1, timeout=120)
    ran = friend.submit(len, "ran").result(timeout=30)
sockets = {}
for name, pid in pids.items():
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    sockets[name] = sorted(
        f"{c.laddr.ip}:{c.laddr.port}"
        for p in procs for c in p.net_connections(kind="inet") if c.status == "LISTEN"
    )
try:
    Client(address, timeout=5).submit(open, marker, "w").result(timeout=5)
    stranger = "ran"
except (OSError, ValueError, TypeError):
    stranger = "refused"
print(json.dumps({"ran": ran, "sockets": sockets, "stranger": stranger,
                  "marker": os.path.exists(marker)}))
"""


def compose_command(service: dict[str, object], certificates: Path) -> str:
    """The shell command a container of `service` runs: compose's `$$` unescaped and the
    certificate folder where this test keeps it."""
    command = str(service["command"]).replace("$$", "$")
    return command.replace(TLS_DIR, str(certificates))


def namespace_script(scheduler: str, worker: str, check: str, tmp: Path) -> str:
    """Set up the container-like namespaces, start both services, run `check` (a command
    line; the services' pids follow it as JSON), stop them."""
    hosts = tmp / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{STACK_IP} dask-scheduler\n")
    return "\n".join(
        [
            "set -e",
            "ip link set lo up",
            # eth0 with its own address, as docker gives a container (a veth pair's end)
            f"ip link add eth0 type veth peer name peer0 || exit {NO_VETH}",
            f"ip addr add {STACK_IP}/24 dev eth0",
            "ip link set peer0 up",
            "ip link set eth0 up",
            "hostname dask-scheduler",
            f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
            f"{scheduler} > {tmp}/scheduler.log 2>&1 &",
            "scheduler=$!",
            "sleep 2",
            f"{worker} > {tmp}/worker.log 2>&1 &",
            "worker=$!",
            'pids="{\\"scheduler\\": $scheduler, \\"worker\\": $worker}"',
            "status=0",
            f'{check} "$pids" || status=$?',
            "kill $worker $scheduler 2>/dev/null || true",
            "wait $worker $scheduler 2>/dev/null || true",
            "exit $status",
        ]
    )


@pytest.mark.slow
def test_the_compose_dask_services_listen_on_the_stack_network_only_with_tls(
    tmp_path: Path,
) -> None:
    """Fails on the scheduler command before 1891859: with TLS files, `dask scheduler
    --interface eth0` refuses to start ("Can not specify both interface and host")."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to make the services' network namespace")
    compose = yaml.safe_load(COMPOSE.read_text())
    certificates = tmp_path / "dask-tls"
    certificates.mkdir()
    tls = write_certificates(certificates)
    bin_dir = Path(sys.executable).parent
    env_path = f"{bin_dir}:{os.environ.get('PATH', '')}"  # `dask` as the image's PATH has it
    scheduler = compose_command(compose["services"]["dask-scheduler"], certificates)
    worker = compose_command(compose["x-dask-gpu-worker"], certificates)
    marker = tmp_path / "stranger-ran"
    check = shlex.join([sys.executable, "-c", CHECK, json.dumps(tls), str(marker)])
    script = namespace_script(scheduler, worker, check, tmp_path)
    env = {**os.environ, "PATH": env_path, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    done = subprocess.run(
        ["unshare", "--net", "--uts", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    if done.returncode == NO_VETH:
        pytest.skip(f"this kernel cannot make the services' eth0 (veth): {done.stderr.strip()}")
    logs = [p.read_text() for p in sorted(tmp_path.glob("*.log"))]
    assert done.returncode == 0, (done.stdout, done.stderr, logs)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["ran"] == 3
    assert found["stranger"] == "refused" and not found["marker"]
    scheduler = dict(reversed(a.rsplit(":", 1)) for a in found["sockets"]["scheduler"])
    assert scheduler["8786"] == STACK_IP  # the Dask port: on the stack network only
    # besides it only the dashboard, which binds the container's interfaces (compose
    # publishes it on the host's loopback only)
    assert set(scheduler) <= {"8786", "8787"}, found["sockets"]["scheduler"]
    worker_ips = {a.rsplit(":", 1)[0] for a in found["sockets"]["worker"]}
    assert worker_ips == {STACK_IP}, found["sockets"]["worker"]
