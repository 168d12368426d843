"""One line naming the CPU `make test` runs on and the features that change what the suite
exercises (bf16 in hardware, AVX-512, VNNI, AMX): printed before the tests, so a failure or a
slow run on one kind of CPU is told apart from one on another (benchmarks/RESULTS.md, "The
test suite's time", names the CPU of each figure the same way)."""

from __future__ import annotations

import os
from pathlib import Path

from wsi_segment.models.cpu import cpu_flags

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name as /proc/cpuinfo gives it ('unknown' where it does not)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else "unknown"


def cpu_line() -> str:
    """`cpu: <model>, <n> cores; has ...; lacks ...`."""
    flags = cpu_flags()
    has = [f for f in FEATURES if f in flags]
    lacks = [f for f in FEATURES if f not in flags]
    cores = len(os.sched_getaffinity(0))
    return (
        f"cpu: {cpu_model()}, {cores} cores; has {' '.join(has) or 'none of them'}; "
        f"lacks {' '.join(lacks) or 'none'}"
    )


if __name__ == "__main__":
    print(cpu_line())
