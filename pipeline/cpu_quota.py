"""The CPU time a cgroup grants this process, in cores: `docker run --cpus`, a Kubernetes
CPU limit, a systemd `CPUQuota=`.

A quota does not narrow the affinity mask: a container limited to 2 CPUs on a 64-core host
sees 64 cores in `os.sched_getaffinity`, and torch's threads, decoders and writers sized from
those would have the kernel throttle the run for most of each period. (SLURM and `--cpuset-cpus`
narrow the mask, which `machine.usable_cores` reads first.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota_cores(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> float | None:
    """The smallest CPU quota on this process's cgroup and its ancestors, in cores (cgroup v2
    `cpu.max`, v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`); None where none is set or
    there is no cgroup file system. `proc_cgroup`: /proc/self/cgroup's text."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quotas: list[float] = []
    for line in proc_cgroup.splitlines():
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and not controllers:  # v2, the unified hierarchy
            quotas += _quotas(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1, mounted by its controllers' names
            for mount in dict.fromkeys((controllers, "cpu")):
                quotas += _quotas(root / mount, path, _v1_quota)
    return min(quotas, default=None)


def _quotas(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set along `path` under `mount`, from the process's cgroup up to the mount's
    root (in a container the mount is often the container's own cgroup, where the path names
    the host's: then only the root exists, and it is the container's)."""
    found = []
    folder = mount / path.strip("/")
    for directory in (folder, *folder.parents):
        if directory.is_dir():
            quota = read(directory)
            if quota is not None:
                found.append(quota)
        if directory == mount:
            break
    return found


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
