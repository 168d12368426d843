"""The address-space limit (`ulimit -v`): a run under one too low is refused before it loads
anything; running out under it is one error naming it, never a traceback or the blame of a
model's encoder name. Real subprocesses whose limit is set as a shell's `ulimit -v` sets it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.address_space import MIN_ADDRESS_SPACE, ran_out
from wsi_segment.errors import ConfigError


def under_limit(
    limit: int, *argv: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`argv` run with its address-space limit at `limit` bytes, as `ulimit -v` sets it."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        argv, preexec_fn=limited, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_run_under_too_low_a_limit_is_refused_before_it_loads_anything(tmp_path: Path) -> None:
    """Under 300 MiB the run spun for ever in OpenBLAS's initialiser (scipy's import), deaf to
    SIGTERM, until 2026-11-28; under 4 GiB a cold run was a traceback. Now one line, at once."""
    cli = str(Path(sys.executable).parent / "wsi-segment")
    for limit in (300 << 20, 4 << 30):
        done = under_limit(limit, cli, str(CMU_SLIDE), "--out", str(tmp_path / "out"), timeout=60)
        assert done.returncode == 1, done.stderr[-2000:]
        assert done.stderr.splitlines() == [
            f"error: the address-space limit (`ulimit -v`) is {limit / 2**30:.2f} GiB, and a run "
            "needs at least 8.00 GiB of address space (it maps far more than it uses); raise or "
            "remove the limit before the run (`ulimit -v unlimited` in the shell or job script; "
            "on SLURM limit memory with --mem, which does not cap address space)"
        ]
        assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a whole cold run (it exports and compiles the demo model's graph: ~27 CPU-s)
def test_a_run_at_the_minimum_finishes(tmp_path: Path) -> None:
    """With a runtime cache of its own: the cold run (it compiles the graph, importing torch)."""
    cli = str(Path(sys.executable).parent / "wsi-segment")
    out = tmp_path / "out"
    argv = [cli, str(CMU_SLIDE), "--out", str(out), "--quiet"]
    done = under_limit(MIN_ADDRESS_SPACE, *argv, env={"WSI_SEGMENT_CACHE_DIR": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / CMU_SLIDE.stem / "summary.json").is_file()


BUILD_UNDER_LIMIT = """
import resource, sys
from wsi_segment.address_space import memory_named
from wsi_segment.models.segmenter import build_segmenter
import torch, segmentation_models_pytorch  # loaded first: the limit is for the build
limit = resource.getrlimit(resource.RLIMIT_AS)[1]
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (4 << 20), limit))
with memory_named("building the segmenter"):
    build_segmenter("resnet50", 4)
"""


def test_running_out_while_building_a_model_names_the_limit_not_the_encoder() -> None:
    """A resnet50 DeepLabV3+ built with 4 MiB of address space left: torch's allocation fails
    (RuntimeError "can't allocate memory"), which was reported as "unknown segmenter encoder
    'resnet50'" until 2026-11-28."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD_UNDER_LIMIT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "wsi_segment.errors.OutOfMemory: building the segmenter: out of memory under the "
        "address-space limit (`ulimit -v`) of "
    ), done.stderr[-2000:]
    assert "unknown segmenter encoder" not in done.stderr


@pytest.mark.parametrize("encoder", ["nope", "tu-nope"])
def test_an_unknown_encoder_is_named_as_such(encoder: str) -> None:
    from wsi_segment.models.segmenter import build_segmenter

    with pytest.raises(ConfigError, match=f"unknown segmenter encoder '{encoder}'"):
        build_segmenter(encoder, 4)


def test_what_counts_as_running_out() -> None:
    assert ran_out(MemoryError())
    assert ran_out(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert ran_out(OSError(12, "Cannot allocate memory"))
    wrapped = ValueError("build failed")
    wrapped.__cause__ = MemoryError()
    assert ran_out(wrapped)
    assert ran_out(ImportError("libtorch_cpu.so: failed to map segment from shared object"))
    assert ran_out(RuntimeError("can't start new thread"))
    assert not ran_out(RuntimeError("Unknown model (nope)"))
    assert not ran_out(OSError(2, "No such file or directory"))
