"""models/cpu.py: the one reader of the CPU's flags, for the run policy and the model alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wsi_segment.models import cpu, device
from wsi_segment.pipeline import machine


def test_flags_are_read_from_cpuinfo_and_empty_where_there_is_none(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4a avx512_bf16\nbugs\t\t: none\n")
    assert cpu.cpu_flags(str(info)) == frozenset({"fpu", "sse4a", "avx512_bf16"})
    assert cpu.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_the_policy_and_the_model_read_the_flags_through_one_torch_free_function() -> None:
    assert not hasattr(device, "cpu_flags")
    assert not hasattr(machine, "read_cpu_flags")
    assert machine.probe_machine().cpu_flags == cpu.cpu_flags()
    code = "import sys, wsi_segment.models.cpu as c; c.cpu_flags(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
