"""A cgroup's CPU quota caps the cores a run sizes itself by: a real cgroup v1 group with a
quota, and cgroup v2's `cpu.max` as the kernel writes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wsi_segment.pipeline.cpu_quota import CGROUP_ROOT, cpu_quota_cores

USABLE = "from wsi_segment.pipeline.machine import usable_cores; print(usable_cores())"


def _writable_cpu_hierarchy() -> Path:
    mount = CGROUP_ROOT / "cpu"
    if not (mount / "cpu.cfs_quota_us").exists() or not os.access(mount, os.W_OK):
        pytest.skip(f"needs a writable cgroup v1 cpu hierarchy at {mount} (root, cgroup v1)")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 or more cores, so a 1-core quota shows")
    return mount


def test_a_process_in_a_cgroup_with_a_cpu_quota_sizes_itself_by_the_quota():
    """As under `docker run --cpus 0.5` on a machine of several cores: the affinity mask
    still lists them all, the quota gives half a core a period: one usable core."""
    group = _writable_cpu_hierarchy() / f"wsi-segment-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("50000")
        inside = f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1"'
        run = subprocess.run(
            ["sh", "-c", inside, sys.executable, USABLE], capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
        assert run.stdout.split() == ["1"]
        outside = subprocess.run([sys.executable, "-c", USABLE], capture_output=True, text=True)
        assert int(outside.stdout) == len(os.sched_getaffinity(0))
    finally:
        group.rmdir()  # empty again: its one process has ended


def _v2_tree(tmp_path: Path, limits: dict[str, str]) -> Path:
    for folder, cpu_max in limits.items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def test_cgroup_v2_the_smallest_quota_on_the_way_up_counts(tmp_path):
    root = _v2_tree(tmp_path, {".": "max 100000", "k8s": "250000 100000", "k8s/pod": "max 100000"})
    assert cpu_quota_cores("0::/k8s/pod\n", root) == 2.5
    assert cpu_quota_cores("0::/\n", _v2_tree(tmp_path / "free", {".": "max 100000"})) is None


def test_cgroup_v1_in_a_container_whose_mount_is_its_own_group(tmp_path):
    """Without a cgroup namespace the path names the host's group; the container's mount is
    that group itself."""
    mount = tmp_path / "cpu,cpuacct"
    mount.mkdir()
    (mount / "cpu.cfs_quota_us").write_text("150000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    text = "5:cpu,cpuacct:/docker/0123abcd\n4:memory:/docker/0123abcd\n"
    assert cpu_quota_cores(text, tmp_path) == 1.5
    (mount / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cpu_quota_cores(text, tmp_path) is None
    assert cpu_quota_cores("", tmp_path) is None
