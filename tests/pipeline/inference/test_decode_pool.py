"""Decoder processes and signals: a signal to the process group while the decoders start
(a Ctrl-C right after launching a run) ends them quietly, as one that comes later does."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
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
