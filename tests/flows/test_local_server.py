"""The temporary Prefect server of `wsi-segment batch` where it cannot keep its database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import CMU_SLIDE


def test_an_unwritable_prefect_home_fails_at_once_naming_the_folder(tmp_path: Path) -> None:
    """HOME under a file (a service user's /nonexistent): one `error:` line with the folder
    and the fix, in seconds, instead of three server starts and "did not start within 90 s"."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")  # a file: nothing can be made under it, whoever runs the test
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(blocker / "home"), DO_NOT_TRACK="1")
    out = tmp_path / "out"
    cli = [str(Path(sys.executable).parent / "wsi-segment"), "batch", str(CMU_SLIDE)]
    started = time.monotonic()
    done = subprocess.run([*cli, "--out", str(out), "--workers", "0"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    seconds = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {blocker / 'home' / '.prefect'}: cannot create or write Prefect's folder for "
        f"the temporary server's database (HOME={blocker / 'home'}); set PREFECT_HOME to a "
        "writable folder, or run a Prefect server and set PREFECT_API_URL (docs/deploy.md)"
    ], done.stderr[-3000:]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert seconds < 45, seconds  # before: 60-90 s and more under load
    assert not out.exists() or list(out.iterdir()) == []


def test_a_full_prefect_home_fails_at_once_with_its_free_space(tmp_path: Path) -> None:
    """PREFECT_HOME on a 3 MiB file system (a home quota nearly spent): one `error:` line with
    the folder, its free space, the need and the fixes, before any slide runs and before the
    server starts; nothing left there (until 2026-11-28: "did not start within 90 s", or, with
    a database already there, every slide done and then thousands of traceback lines, exit 1,
    no table)."""
    from tests.conftest import tmpfs

    with tmpfs(tmp_path / "home", "size=3m") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1")
        out = tmp_path / "out"
        cli = [str(Path(sys.executable).parent / "wsi-segment"), "batch", str(CMU_SLIDE)]
        done = subprocess.run([*cli, "--out", str(out), "--workers", "0"], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: {home}: no room for the temporary Prefect server's database (No space "
            "left on device; 3 MiB free, it needs 32 MiB); free space there (`prefect server "
            "database reset -y` empties the server's history: wsi-segment's outputs do not "
            "depend on it), set PREFECT_HOME to a folder with room, or run a Prefect server and "
            "set PREFECT_API_URL (docs/deploy.md)"
        ], done.stderr[-3000:]
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert list(home.iterdir()) == []  # the probe removed, no database begun
        assert not out.exists() or list(out.iterdir()) == []


def test_a_prefect_home_with_room_passes_and_keeps_nothing(tmp_path: Path) -> None:
    from wsi_segment.flows.local_server import check_database_room

    check_database_room(tmp_path)
    assert list(tmp_path.iterdir()) == []
