"""The CPU's feature flags: what the precision and runtime rules read of the hardware.

Torch-free, so the run policy's machine description (pipeline/machine.py) and the model's
device code (models/device.py) read them through this one function without the policy
paying for torch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

AMX_FLAG = "amx_bf16"  # AMX with bf16: the CPU bf16 measured reliably faster than fp32
AVX512_BF16_FLAG = "avx512_bf16"
BF16_FLAGS = frozenset({AMX_FLAG, AVX512_BF16_FLAG})  # bf16 in hardware


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()
