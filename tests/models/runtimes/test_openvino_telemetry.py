"""OpenVINO's telemetry stays off: a model conversion sends nothing and starts no process.

Its converter sends usage events unless the user opted out (a file in ~/intel), each from a
new process; a service user has no such file. A fresh process each time (whether telemetry
is on is settled when OpenVINO is first imported), with a HOME of its own and no CI
variables (which turn it off by themselves)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

CONVERT = """
import sys
from pathlib import Path

import torch

from tests.models.runtimes.test_openvino_runtime import _tiny_source
from wsi_segment.models.cpu import cpu_flags
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.runtimes.openvino_runtime import OpenVINOGraphs

graphs = OpenVINOGraphs(_tiny_source(), "fp32", 1, cpu_flags(), Path(sys.argv[1]))
graphs.run(torch.zeros((2, 224, 224, 3), dtype=torch.uint8), Geometry(224, 16, 192, 4, True), 1)
assert graphs.builds == 1, graphs.builds  # exported and converted here, not read from a cache
converter = sys.modules["openvino.tools.ovc.convert_impl"]
print(converter.tm.__name__)
"""


@pytest.mark.slow  # a fresh interpreter converting a model
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="no OpenVINO")
def test_a_conversion_by_a_user_who_never_opted_out_sends_no_telemetry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    argv = [sys.executable, "-c", CONVERT, str(tmp_path / "cache")]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # the converter fell back to its stub, which sends nothing
    assert done.stdout.split() == ["openvino.tools.ovc.telemetry_stub"]
    # telemetry that is on makes a client id in ~/intel before its first event
    assert sorted(p.name for p in home.iterdir()) == []
