"""flows/worker_pipes.py for real: a process whose stdout and stderr are pipes, and whose
reader (the worker) goes away while it runs.

Without the relay, the first line Prefect's console handler logs after the reader is gone
raises `SystemExit` in the logging thread (what ended a deployed run's Dask event loop); with
it, the line is dropped, later lines and a child process's writes never fail, and what was
written while the reader lived reached it. The whole flow run with its worker SIGKILLed:
tests/flows/test_deploy_worker_killed.py (slow).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The process under test: optionally relays its output, logs and prints while its reader
# lives, then (once told on stdin) logs from a thread, prints, and runs a child that writes
# 100 KB to the stderr it inherits; it records what each of those ended with in a file.
CHILD = r"""
import logging, subprocess, sys, threading
from wsi_segment.flows.worker_pipes import relay_output
from prefect.logging.handlers import PrefectConsoleHandler

mode, result_file = sys.argv[1], sys.argv[2]
if mode == "relay":
    relay_output()
log = logging.getLogger("worker-pipes-test")
log.propagate = False
log.addHandler(PrefectConsoleHandler())
print("printed while read", flush=True)
log.warning("logged while read")
sys.stdin.readline()  # the reader is gone now
outcome = []

def log_in_a_thread():
    try:
        log.warning("logged after the reader died")
        outcome.append("logged")
    except BaseException as exc:
        outcome.append(type(exc).__name__)

thread = threading.Thread(target=log_in_a_thread)
thread.start()
thread.join()
try:
    print("printed after the reader died", flush=True)
    outcome.append("printed")
except BaseException as exc:
    outcome.append(type(exc).__name__)
child = subprocess.run(
    [sys.executable, "-c", "import sys; sys.stderr.write('x' * 100_000); sys.stderr.flush()"]
)
outcome.append(f"child exit {child.returncode}")
open(result_file, "w").write(",".join(outcome))
"""


WHILE_READ = (b"printed while read", b"logged while read")  # two streams: in either order


def run_with_a_reader_that_dies(mode: str, tmp_path: Path) -> tuple[str, bytes, int]:
    """Run CHILD with stdout and stderr one pipe, read it until both lines written while it
    is read have arrived, close the read end, let CHILD go on; returns what CHILD recorded,
    what was read, and its exit code."""
    result = tmp_path / f"{mode}.txt"
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(result)],
        stdin=subprocess.PIPE,
        stdout=write_end,
        stderr=write_end,
        cwd=Path(__file__).resolve().parents[2],
    )
    os.close(write_end)
    read = b""
    deadline = time.monotonic() + 60
    try:
        while not all(line in read for line in WHILE_READ) and time.monotonic() < deadline:
            if select.select([read_end], [], [], 1)[0]:
                read += os.read(read_end, 65536)
    finally:
        os.close(read_end)  # the worker is gone
    assert child.stdin is not None
    child.stdin.write(b"go\n")
    child.stdin.close()
    code = child.wait(timeout=60)
    return result.read_text(), read, code


def test_without_the_relay_a_dead_reader_turns_a_log_line_into_system_exit(
    tmp_path: Path,
) -> None:
    outcome, read, _ = run_with_a_reader_that_dies("plain", tmp_path)
    assert b"printed while read" in read and b"logged while read" in read
    # rich's console raises SystemExit in the thread that logged (and puts /dev/null on
    # stdout, so the print after it goes nowhere); the child writing to stderr fails
    logged, _, child = outcome.split(",")
    assert logged == "SystemExit"
    assert child == "child exit 1"


def test_with_the_relay_a_dead_reader_costs_nothing_but_the_lines(tmp_path: Path) -> None:
    outcome, read, code = run_with_a_reader_that_dies("relay", tmp_path)
    assert b"printed while read" in read and b"logged while read" in read  # copied through
    assert outcome == "logged,printed,child exit 0"
    assert code == 0


def test_what_a_relayed_process_writes_before_it_dies_by_a_signal_reaches_a_live_reader() -> None:
    """A run stopped by SIGTERM dies by the signal (Prefect re-sends it with the default
    action), with no exit handler run: its last lines, 300 KB here, still arrive."""
    code = (
        "import os, signal, sys\n"
        "from wsi_segment.flows.worker_pipes import relay_output\n"
        "relay_output()\n"
        "sys.stdout.write('o' * 300_000)\n"
        "sys.stderr.write('e' * 300_000)\n"
        "sys.stdout.flush(); sys.stderr.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == b"o" * 300_000
    assert done.stderr == b"e" * 300_000


@pytest.mark.usefixtures("prefect_harness")
def test_a_flow_run_outside_a_deployment_keeps_its_streams() -> None:
    """Only a deployment's top-level run relays: `wsi-segment batch` and tests keep theirs."""
    from prefect import flow

    from wsi_segment.flows.worker_pipes import outlive_worker_pipes

    before = [os.fstat(fd).st_ino for fd in (1, 2)]

    @flow
    def plain() -> int:
        return len(outlive_worker_pipes())

    assert plain() == 0
    assert [os.fstat(fd).st_ino for fd in (1, 2)] == before
