"""benchmarks/gpu_session.sh still runs what it names: a lent GPU machine gives a session
minutes, and a script that stops on a renamed test file or a dropped option wastes them.

Every benchmark script it calls must exist and accept each option it passes (read from the
script's own `--help`), and its `check` part must find the test modules with CUDA-only tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SESSION = ROOT / "benchmarks" / "gpu_session.sh"


def _calls() -> dict[str, set[str]]:
    """{benchmark script: the options gpu_session.sh passes it}, line continuations joined."""
    text = SESSION.read_text().replace("\\\n", " ")
    calls: dict[str, set[str]] = {}
    for line in text.splitlines():
        found = re.search(r"\$PY (benchmarks/\w+\.py)(.*)", line)
        if found is None:
            continue
        options = set(re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", found.group(2)))
        calls.setdefault(found.group(1), set()).update(options)
    if "throughput.py" not in " ".join(calls):
        raise AssertionError("gpu_session.sh no longer calls benchmarks/throughput.py")
    # device_section's callers add options to throughput.py's call
    for extra in re.findall(r"device_section (--[a-z-]+)", text):
        calls["benchmarks/throughput.py"].add(extra)
    return calls


@pytest.mark.parametrize("script", sorted(_calls()))
def test_each_script_accepts_the_options_the_session_passes(script: str) -> None:
    path = ROOT / script
    assert path.is_file(), f"gpu_session.sh calls {script}, which is gone"
    shown = subprocess.run(
        [sys.executable, str(path), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    missing = sorted(o for o in _calls()[script] if not re.search(rf"{o}\b", shown.stdout))
    assert not missing, f"{script} no longer takes {missing} (gpu_session.sh passes them)"


def test_the_check_part_finds_the_cuda_only_test_modules() -> None:
    listing = subprocess.run(
        ["bash", "-c", f'source <(sed -n "/^cuda_test_files()/,/^}}/p" {SESSION}); cuda_test_files'],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    files = listing.stdout.split()
    assert "tests/pipeline/inference/test_engine.py" in files  # the engine on CUDA
    assert "tests/flows/test_dask_bands_cuda.py" in files
    assert all((ROOT / f).is_file() for f in files)
