"""deploy/slurm-single-node.sh starts slurmctld and slurmd listening on loopback only
(issue 77, item 5: they listened on 0.0.0.0), and the SLURM it starts still runs a job.
Needs root and Debian's slurm-wlm + munge; skipped, saying why, elsewhere (the `slurm`
fixture)."""

from __future__ import annotations

import subprocess

from tests.flows.conftest import SLURM_PORTS, listening


def test_the_single_node_slurm_listens_on_loopback_only(slurm: dict[str, str]) -> None:
    assert [listening(port) for port in SLURM_PORTS] == [["127.0.0.1"], ["127.0.0.1"]]
    job = subprocess.run(
        ["srun", "-N1", "echo", "ran"], env=slurm, capture_output=True, text=True, timeout=60
    )
    assert job.stdout.strip() == "ran", job.stderr
