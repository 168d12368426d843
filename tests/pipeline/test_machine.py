"""The machine probe: what it finds of CUDA, and why it finds none beside an NVIDIA driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsi_segment.pipeline.machine import Machine, probe_gpus
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.run_policy import decide_device

needs_broken_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="needs a machine where torch's CUDA does not start"
)


def torch_cuda_error() -> str:
    """What torch itself says when CUDA does not start on this machine."""
    try:
        torch.cuda.init()
    except Exception as exc:
        return str(exc).strip().splitlines()[0]
    raise AssertionError("CUDA started")


@needs_broken_cuda
def test_a_driver_that_gives_cuda_no_start_is_kept_with_torch_s_reason(tmp_path: Path) -> None:
    """Here no GPU exists, so CUDA cannot start: with a driver present (a file at the path
    the probe checks) the probe finds no GPU, as before, and now keeps torch's own words."""
    driver = tmp_path / "nvidiactl"
    driver.touch()
    gpus, trouble = probe_gpus(str(driver))
    assert gpus == ()
    assert trouble == (
        f"an NVIDIA driver is installed ({driver}) but CUDA does not start: {torch_cuda_error()}"
    )


@needs_broken_cuda
def test_an_address_space_limit_is_named_with_cuda_s_failure(tmp_path: Path) -> None:
    """A limit set by `ulimit -v` (HPC login nodes) keeps CUDA from starting: named too."""
    driver = tmp_path / "nvidiactl"
    driver.touch()
    code = (
        "import resource, sys; from wsi_segment.pipeline.machine import probe_gpus; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({64 << 30}, resource.RLIM_INFINITY)); "
        f"print(probe_gpus({str(driver)!r})[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith(
        f"{torch_cuda_error()}; this process has an address-space limit (ulimit -v {64 << 20} KiB)"
    )


@pytest.mark.parametrize("visible", ["", "-1"])
def test_gpus_hidden_on_purpose_are_no_trouble_and_import_no_torch(
    tmp_path: Path, visible: str
) -> None:
    driver = tmp_path / "nvidiactl"
    driver.touch()
    code = (
        "import sys; from wsi_segment.pipeline.machine import probe_gpus; "
        f"print(probe_gpus({str(driver)!r}), 'torch' in sys.modules)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "((), None) False"


def test_no_driver_is_no_trouble(tmp_path: Path) -> None:
    assert probe_gpus(str(tmp_path / "absent")) == ((), None)


def test_auto_on_a_machine_whose_driver_gives_no_gpu_says_why_it_runs_on_the_cpu() -> None:
    why = "an NVIDIA driver is installed (/dev/nvidiactl) but CUDA does not start: too old"
    machine = Machine(cores=8, memory_bytes=32 << 30, gpu_trouble=why)
    auto = decide_device(machine, SegmentParams())
    assert (auto.value, auto.reason) == ("cpu", f"auto: {why}")
    asked = decide_device(machine, SegmentParams(device="cpu"))
    assert (asked.value, asked.reason) == ("cpu", "asked for (--device cpu)")
    assert machine.as_dict()["gpu_trouble"] == why
    assert Machine(cores=8, memory_bytes=32 << 30).as_dict()["gpu_trouble"] is None
