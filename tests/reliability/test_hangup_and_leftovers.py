"""SIGHUP (the ssh session or terminal went away) ends a run as SIGTERM does, and shared
memory left by a run that was killed is removed by the next run once its owner is gone.

Real `wsi-segment` subprocesses in their own session, signalled through their process
group as a dropped ssh session or a scheduler's kill signals them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import psutil
import pytest

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import leftovers, run_cli
from tests.reliability.test_interruption import (
    OPTIONS,
    STEM,
    our_shared_memory,
    start_and_wait_for_chunks,
)
from wsi_segment.pipeline.inference.decode_pool import DecodePool
from wsi_segment.pipeline.inference.shm_rings import (
    SHM_DIR,
    SHM_PREFIX,
    pid_namespace,
    remove_abandoned_rings,
)


def shared_memory_of(pid: int) -> set[str]:
    """Every /dev/shm file a process and its children map: the decoders' slot ring, and
    any named semaphore (multiprocessing's queues, locks and events hold them)."""
    root = psutil.Process(pid)
    paths: set[str] = set()
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            paths |= {m.path for m in proc.memory_maps() if m.path.startswith(f"{SHM_DIR}/")}
    return paths


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sighup_to_the_process_group_cleans_up_like_sigterm(tiny_model_dir, tmp_path):
    """A dropped ssh session sends SIGHUP to the run's process group: one line `error:
    terminated (SIGHUP)`, exit 129 (128 + 1), no partial folder, no lock, and no slot ring
    left in /dev/shm (the resource tracker survives the hang-up and the decoders end
    quietly); the decoders' pipes hold no named semaphore that could be left."""
    out = tmp_path / "out"
    proc = start_and_wait_for_chunks(tiny_model_dir, out, ["--decoders", "1"], new_session=True)
    mapped = shared_memory_of(proc.pid)
    assert any(Path(p).name.startswith(SHM_PREFIX) for p in mapped), mapped
    assert not any(Path(p).name.startswith("sem.") for p in mapped), mapped  # pipes, no queues
    os.killpg(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 129, err
    # the one error line; a `note:` may name an error the stop came out as (flows.cli)
    assert [ln for ln in err.splitlines() if not ln.startswith("note:")] == [
        "error: terminated (SIGHUP)"
    ], err
    assert leftovers(out) == []
    assert sorted(p for p in mapped if os.path.exists(p)) == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_ring_left_by_a_killed_run_is_removed_by_the_next_run(tiny_model_dir, tmp_path):
    """SIGKILL of the whole group (a scheduler's grace period over, the OOM killer) leaves
    the decoders' slot ring in /dev/shm; the next run that starts decoders removes it,
    since its owner is gone, and finishes the slide."""
    out = tmp_path / "out"
    proc = start_and_wait_for_chunks(tiny_model_dir, out, ["--decoders", "1"], new_session=True)
    ring = our_shared_memory(proc.pid)
    assert len(ring) == 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert our_shared_memory(proc.pid) == ring  # nothing could clean up
    rerun = run_cli([CMU_SLIDE, "--model", tiny_model_dir, "--out", out, *OPTIONS,
                     "--decoders", "1"])  # fmt: skip
    assert rerun.code == 0, rerun.stderr
    assert our_shared_memory(proc.pid) == []
    assert leftovers(out) == [STEM]


def test_only_rings_whose_owner_is_gone_are_removed(tmp_path):
    """Real shared memory: the ring of a process that has ended goes; this process's ring,
    a ring of another pid namespace (another container sharing /dev/shm), a ring named the
    old way (no namespace), one whose "pid" cannot be one and another program's file stay."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(ended.stdout)
    assert not psutil.pid_exists(dead)
    ns = pid_namespace()
    other_ns = format(int(ns, 16) + 1, "x")
    names = {
        "dead": f"{SHM_PREFIX}{dead}_{ns}_{'a' * 12}",
        "alive": f"{SHM_PREFIX}{os.getpid()}_{ns}_{'b' * 12}",
        "other namespace": f"{SHM_PREFIX}{dead}_{other_ns}_{'c' * 12}",
        "old name": f"{SHM_PREFIX}{dead}_{'d' * 12}",
        "not ours": f"{SHM_PREFIX}-notes-{dead}",
        "no pid": f"{SHM_PREFIX}{2**64}_{ns}_{'e' * 12}",  # os.kill: OverflowError
    }
    blocks = [SharedMemory(name, create=True, size=16) for name in names.values()]
    try:
        assert names["dead"] in remove_abandoned_rings()
        present = set(os.listdir(SHM_DIR))
        assert {k for k, name in names.items() if name in present} == {
            "alive",
            "other namespace",
            "old name",
            "not ours",
            "no pid",
        }
    finally:
        for block in blocks:
            block.close()
            try:
                block.unlink()
            except FileNotFoundError:
                from multiprocessing import resource_tracker

                resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]


def test_a_decoder_pool_holds_no_named_semaphore():
    """A run killed with its resource tracker leaves whatever named semaphores it held in
    /dev/shm, and multiprocessing names them so that no later run can tell whose they are:
    the decoders talk over pipes, so the pool (this process and its decoder) maps none,
    where one multiprocessing queue maps three."""

    def semaphores() -> set[str]:
        return {p for p in shared_memory_of(os.getpid()) if Path(p).name.startswith("sem.")}

    before = semaphores()
    queue = multiprocessing.get_context("spawn").Queue()  # what the decoders used to talk over
    try:
        assert len(semaphores() - before) == 3  # the check sees a queue's semaphores
    finally:
        queue.close()
        queue.join_thread()
    del queue
    before = semaphores()
    pool = DecodePool(1)
    try:
        assert pool.procs[0].is_alive()
        assert semaphores() - before == set()
    finally:
        pool.close()
