"""wsi_segment.flows.allocator: two glibc arenas for the console script and the workers we start."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from wsi_segment.flows.allocator import ENV, limit_malloc_arenas, worker_environment


def test_workers_get_two_arenas_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert worker_environment() == {"MALLOC_ARENA_MAX": "2"}
    assert worker_environment(4) == {"MALLOC_ARENA_MAX": "4"}
    monkeypatch.setenv(ENV, "8")
    assert worker_environment() == {}
    assert limit_malloc_arenas() is False  # the user's variable wins


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt arenas are glibc's")
def test_the_cap_is_applied_on_glibc() -> None:
    """In a child process (the cap is for the process's life), as the console script does."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    code = "from flows.allocator import limit_malloc_arenas as f; print(f())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
