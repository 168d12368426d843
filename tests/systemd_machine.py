"""A machine booted with real systemd, for tests of the deploy recipes as an admin runs them.

systemd runs as PID 1 of new PID, mount, UTS, IPC, network and cgroup namespaces, over a
copy-on-write view of this machine's `/` (an overlay whose upper layer is a tmpfs): what it
and the recipe do (users added, units installed in /etc, folders made, files deleted by
systemd-tmpfiles) never reaches the real machine, and /tmp, /run, /dev and /dev/shm are its
own. Its network is its own loopback, so ports it listens on meet nobody else's. Units that
would touch the kernel or the host (sysctl, modules, binfmt, the clock) are masked, and it
boots into an empty target: only what a test starts runs.

Booting needs root, systemd, overlayfs and namespaces; elsewhere `boot` skips, with the error.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

SYSTEMD = Path("/lib/systemd/systemd")
TARGET = "wsi-test.target"
MASKED = [
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-modules-load.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-firstboot.service",
    "systemd-repart.service",
    "systemd-machine-id-commit.service",
    "kmod-static-nodes.service",
    "systemd-logind.service",
    "getty@tty1.service",
    "console-getty.service",
    "e2scrub_reap.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
]
# What a login shell of root has: nothing of the test's environment leaks in.
LOGIN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}

BOOT = r"""
set -eu
R=$1
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$R/ov"
mkdir -p "$R/ov/upper" "$R/ov/work" "$R/root"
cp -a "$R/seed/." "$R/ov/upper/"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/ov/upper,workdir=$R/ov/work" "$R/root"
N=$R/root
mount -t proc proc "$N/proc"
mount --bind "$N/proc/sys" "$N/proc/sys"
mount -o remount,bind,ro "$N/proc/sys"
mount --rbind /sys "$N/sys"
mount -t cgroup2 cgroup2 "$N/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$N/dev"
for d in null zero full random urandom tty; do touch "$N/dev/$d"; mount --bind "/dev/$d" "$N/dev/$d"; done
mkdir -p "$N/dev/pts" "$N/dev/shm" "$N/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$N/dev/pts"
ln -s pts/ptmx "$N/dev/ptmx"; ln -s /proc/self/fd "$N/dev/fd"
mount -t tmpfs -o mode=1777 tmpfs "$N/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$N/run"
mount -t tmpfs -o mode=1777 tmpfs "$N/tmp"
i=0
while read -r src dst; do
  i=$((i + 1)); B=$R/ov/bind-$i
  if [ -L "$N$dst" ]; then rm "$N$dst"; fi  # a link here on the real machine: gone in the overlay only
  mkdir -p "$N$dst" "$B/upper" "$B/work"
  if [ -d "$R/seed$dst" ]; then cp -a "$R/seed$dst/." "$B/upper/"; fi
  mount -t overlay overlay -o "lowerdir=$src,upperdir=$B/upper,workdir=$B/work" "$N$dst"
done < "$R/binds"
mkdir -p "$N/oldroot"
cd "$N"
pivot_root . oldroot
umount -l /oldroot
rmdir /oldroot
export container=wsi-test
exec "$2" --system --unit=wsi-test.target
"""


class SystemdMachine:
    """A booted systemd (see the module's docstring); `sh` runs commands in it as root."""

    def __init__(self, pid: int, boot: subprocess.Popen[bytes], cgroup: Path) -> None:
        self.pid = pid  # systemd's PID on this machine
        self._boot = boot
        self._cgroup = cgroup

    def sh(
        self, script: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`script` run by bash as root in a login-like environment, in the machine."""
        argv = ["nsenter", "-t", str(self.pid), "-a", "-r", "-w"]
        argv += ["env", "-i", *(f"{k}={v}" for k, v in LOGIN_ENV.items()), "bash", "-c", script]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(
                f"in the machine: {script}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def path(self, inside: str) -> Path:
        """A path of the machine, seen from here."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def shutdown(self) -> None:
        """Power off (services stopped as systemd stops them), then make sure all is gone."""
        os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd's "poweroff" signal
        try:
            self._boot.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace: everything in it ends
            self._boot.wait(timeout=30)
        remove_cgroup(self._cgroup)


def remove_cgroup(cgroup: Path) -> None:
    """Remove an empty cgroup and the ones systemd made in it, deepest first."""
    for folder in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        folder.rmdir()
    cgroup.rmdir()


def cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def boot(scratch: Path, files: dict[str, bytes], binds: dict[str, str]) -> SystemdMachine:
    """Boot a machine whose / has `files` (path -> content) over this machine's, and `binds`
    (a folder of this machine -> a path of the machine where it appears, copy-on-write like /:
    e.g. a checkout at /opt/wsi-segment). A bind's source is read from this machine as it is,
    so a checkout under /tmp or on another file system works; a link at its destination is
    replaced (in the overlay only); `files` inside a bind's destination lie over its files.
    Skips, saying why, where systemd cannot be booted here."""
    if os.geteuid() != 0:
        pytest.skip("booting systemd needs root")
    for tool in ("unshare", "nsenter", "pivot_root"):
        if shutil.which(tool) is None:
            pytest.skip(f"booting systemd needs {tool} (util-linux)")
    if not SYSTEMD.is_file():
        pytest.skip(f"no {SYSTEMD} (apt-get install systemd)")
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup2 file system mounted: systemd needs one")

    seed = scratch / "seed"
    units = seed / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / TARGET).write_text("[Unit]\nDescription=wsi-segment test boot\nAllowIsolate=yes\n")
    for unit in MASKED:
        (units / unit).symlink_to("/dev/null")
    for path, content in files.items():
        target = seed / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o755 if content.startswith(b"#!") else 0o644)
    (scratch / "ov").mkdir()
    (scratch / "binds").write_text("".join(f"{s} {d}\n" for s, d in binds.items()))
    (scratch / "boot.sh").write_text(BOOT)

    cgroup = root / f"wsi-test-{os.getpid()}-{time.monotonic_ns()}"
    cgroup.mkdir()
    log = open(scratch / "boot.log", "wb")  # noqa: SIM115 (the boot's output, read on failure)
    boot = subprocess.Popen(
        [
            "sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup),
            "unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup",
            "bash", str(scratch / "boot.sh"), str(scratch), str(SYSTEMD),
        ],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 60
    pid = None
    while time.monotonic() < deadline and boot.poll() is None:
        children = Path(f"/proc/{boot.pid}/task/{boot.pid}/children")
        try:
            found = children.read_text().split()
        except OSError:
            found = []
        if found:
            pid = int(found[0])
            machine = SystemdMachine(pid, boot, cgroup)
            state = machine.sh("systemctl is-system-running", check=False, timeout=30)
            if state.stdout.strip() in ("running", "degraded"):
                return machine
        time.sleep(0.5)
    if boot.poll() is None and pid is not None:
        SystemdMachine(pid, boot, cgroup).shutdown()
    else:
        boot.kill()
        boot.wait()
        remove_cgroup(cgroup)
    reason = (scratch / "boot.log").read_text(errors="replace").strip().splitlines()
    pytest.skip(f"cannot boot systemd here: {reason[-1] if reason else 'no state in 60 s'}")
