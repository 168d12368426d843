"""Decoder processes and signals: a signal to the process group while the decoders start
(a Ctrl-C right after launching a run) ends them quietly, as one that comes later does."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest

from wsi_segment.pipeline.inference.decode_pool import signals_blocked


@pytest.mark.parametrize(
    # both are blocked by the same call (`signals_blocked`); the fast suite runs Ctrl-C's
    "signum",
    [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
)
def test_a_signal_while_the_decoders_start_prints_nothing(signum):
    """Before the decoders blocked the stopping signals until their handlers were in place,
    a signal to the group during their start-up printed each one's KeyboardInterrupt
    traceback from inside its imports (57 of 60 such runs)."""
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1):
        run = subprocess.run(
            [sys.executable, "-m", "tests.pipeline.inference.signalled_pool", str(delay),
             str(int(signum))],
            capture_output=True, text=True, timeout=60, start_new_session=True,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stderr == "", f"after {delay} s:\n{run.stderr}"
        pids = [int(pid) for pid in run.stdout.split()]
        assert len(pids) == 2
        assert not any(psutil.pid_exists(pid) for pid in pids)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_decoders_of_a_thread_that_holds_the_signals_go_on_through_the_groups_signal(signum):
    """A batch's Dask worker holds the stopping signals (the batch stops its slides itself);
    its decoders unblocked them, so a Ctrl-C to the group ended them and failed the worker's
    band with the KeyboardInterrupt: tracebacks and a restarted worker. They now keep the
    block of the thread that started them, and end when their pool closes."""
    with signals_blocked():  # inherited from process start, as a worker's (and its threads')
        run = subprocess.run(
            [sys.executable, "-m", "tests.pipeline.inference.signalled_pool", "0.5",
             str(int(signum)), "held"],
            capture_output=True, text=True, timeout=60, start_new_session=True,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    pids, alive = run.stdout.splitlines()
    assert alive.split() == ["True", "True"]  # the signal did not end them
    assert not any(psutil.pid_exists(int(pid)) for pid in pids.split())  # the close did


# In a mount namespace of its own (the other test worker keeps the real /dev/shm): a 4 MiB
# /dev/shm, then the decoders' rings of three slides at 512 px tiles (768 KiB slots)
def own_shm(options: str) -> list[str]:
    """A command prefix that runs its command on a /dev/shm of its own, a tmpfs with `options`."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o {options} tmpfs /dev/shm && exec "$0" "$@"']  # fmt: skip


def on_small_shm(script: str, options: str = "size=4m") -> subprocess.CompletedProcess[str]:
    """`script` run by this Python on a /dev/shm mounted with `options` (a 4 MiB one; the
    test skipped, with the reason, where mount namespaces are not allowed); it must exit 0."""
    shm = own_shm(options)
    probe = subprocess.run([*shm, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here ({probe.stderr.strip()})")
    run = subprocess.run(
        [*shm, sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, (run.returncode, run.stderr)
    return run


THREE_RINGS = """
from wsi_segment.errors import WsiSegmentError
from wsi_segment.pipeline.inference.decode_pool import decoder_ring
rings = []
try:
    for _ in range(3):
        rings.append(decoder_ring(1, 1, 512))
except WsiSegmentError as exc:
    print("error:", exc)
for ring in rings:
    for slot in range(ring.slots):
        ring.view(slot, 1)[:] = 255  # every page written, as the decoders fill their slots
print("slots:", [ring.slots for ring in rings])
for ring in rings:
    ring.close()
"""


def test_rings_sized_one_after_another_fit_a_small_dev_shm() -> None:
    """A batch's slides size their decoders' rings one after another from /dev/shm's free
    memory (half of it at most). tmpfs gives a ring its pages on first write: before rings
    reserved them, each slide saw the same free memory, three rings of 1.5 MiB went on a
    4 MiB /dev/shm, and filling them died of SIGBUS. Now the second is sized from what the
    first left, and one that does not fit is the error that names the fix."""
    run = on_small_shm(THREE_RINGS)
    lines = run.stdout.splitlines()
    assert lines[-1] == "slots: [2]"  # 1.5 MiB of the 4: the next would have 1.25 MiB, < 2 slots
    assert lines[0].startswith("error: /dev/shm: ") and "--shm-size" in lines[0]


TOO_BIG_RING = """
import os
from wsi_segment.errors import WsiSegmentError
from wsi_segment.pipeline.inference.decode_pool import SlotRing
try:
    SlotRing(8, 1, 512)  # 6 MiB: what another program's use leaves no room for
except WsiSegmentError as exc:
    print("error:", exc)
print("left:", os.listdir("/dev/shm"))
"""


def test_a_ring_that_cannot_have_its_memory_is_an_error_and_leaves_nothing() -> None:
    """Where /dev/shm fills between sizing and making a ring (another program), the ring's
    reservation fails at once with the fix, and the ring is removed: no decoder SIGBUS."""
    run = on_small_shm(TOO_BIG_RING)
    error, left = run.stdout.splitlines()
    assert (
        error.startswith("error: /dev/shm: no room for the decoders' 6.0 MiB")
        and "--shm-size" in error
    )
    assert left == "left: []"


ONE_RING = """
import os
from wsi_segment.errors import WsiSegmentError
from wsi_segment.pipeline.inference.decode_pool import decoder_ring
try:
    decoder_ring(2, 1, 512)
except WsiSegmentError as exc:
    print("error:", exc)
print("left:", os.listdir("/dev/shm"))
"""


def test_a_dev_shm_this_user_cannot_write_is_one_error_with_the_fix() -> None:
    """A read-only /dev/shm (a hardened container's): one error naming it and the fix, no
    traceback from the library (until 2026-11-28: OSError [Errno 30] from shm_open)."""
    run = on_small_shm(ONE_RING, "ro,size=64m")
    error, left = run.stdout.splitlines()
    assert error == (
        "error: /dev/shm: the decoders' 4.5 MiB of shared memory cannot be created there "
        "(Read-only file system); pass --decoders 0 (one reader thread, the same outputs), or "
        "run where /dev/shm is writable by this user"
    )
    assert left == "left: []"


def test_a_small_dev_shm_is_named_with_its_real_sizes() -> None:
    """A 300 KiB /dev/shm: the figures say what is free and needed (they read "0 MiB free,
    needs 4 MiB" until 2026-11-28)."""
    run = on_small_shm(ONE_RING, "size=300k")
    error = run.stdout.splitlines()[0]
    assert error.startswith(
        "error: /dev/shm: 300 KiB of shared memory free, the engine needs 4.5 MiB for 2 "
        "decoders; pass fewer --decoders"
    ), error
