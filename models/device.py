"""Where and in which precision the networks run.

CPUs with bf16 in hardware (AMX, or AVX512-BF16) can autocast to bf16. With AMX that is ~3x
fp32 for DeepLabV3+ (16 -> 50 tiles/s at 224 px on this project's 2-core AMX machine); with
AVX512-BF16 alone it measured 0.66-0.78x fp32 (benchmarks/RESULTS.md, precision). So on the
CPU `precision_for` names bf16 as the candidate only where the CPU has AMX, and
`SegmentationModel.to_device` keeps it only when the model's labels on fixed calibration
tiles agree with fp32's (models/precision_calibration.py): the choice depends on the model
and the machine, never on a run's tiles or timing. On CUDA, bf16 where supported, else
fp16. `force_fp32` turns all of it off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from wsi_segment.errors import ConfigError

from . import cpu
from .cpu import AMX_FLAG, BF16_FLAGS


def pick_device(requested: str | torch.device = "auto") -> torch.device:
    """auto -> cuda if available else cpu; 'cuda' (or 'cuda:i') without a GPU is an error."""
    name = str(requested).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} was requested but no CUDA GPU is available to torch "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible"
            )
        return dev
    raise ConfigError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:<index>")


def cpu_supports_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU has bf16 in hardware: AMX or AVX512-BF16 (`flags`: default ours).

    `--precision bf16` runs on it; 'auto' asks for more (`cpu_has_amx`)."""
    return bool((cpu.cpu_flags() if flags is None else flags) & BF16_FLAGS)


def cpu_has_amx(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU has AMX with bf16, the only CPU bf16 measured reliably faster
    than fp32 (`flags`: default ours)."""
    return AMX_FLAG in (cpu.cpu_flags() if flags is None else flags)


def precision_for(
    device: torch.device | str, force_fp32: bool = False, flags: frozenset[str] | None = None
) -> torch.dtype | None:
    """Autocast dtype 'auto' starts from on `device`, or None for plain fp32 (on the CPU:
    bf16 is only the candidate, and only with AMX; `flags`: the CPU's, default ours)."""
    device = torch.device(device)
    if force_fp32:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_amx(flags):
        return torch.bfloat16
    return None


def parse_precision(
    precision: str | torch.dtype | None, device: torch.device
) -> torch.dtype | None:
    """'auto' | 'fp32' | 'bf16' | 'fp16' | dtype | None -> autocast dtype or None."""
    if precision is None or precision == "fp32" or precision == torch.float32:
        return None
    if precision == "auto":
        return precision_for(device)
    named = {"bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = named.get(precision, precision) if isinstance(precision, str) else precision
    if dtype not in (torch.bfloat16, torch.float16):
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("fp16 autocast is for GPUs; on CPU use bf16 or fp32")
    return dtype


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast for `dtype`, or nothing when dtype is None."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def fit_batch_size(
    requested: int, free_bytes: int, per_tile_bytes: float, headroom: float = 0.8
) -> int:
    """Largest batch <= `requested` whose working memory fits `headroom` of the free device
    memory (at least 1), so a big `--batch-size` on a small GPU runs instead of failing."""
    if per_tile_bytes <= 0:
        return max(1, int(requested))
    fits = int(free_bytes * headroom // per_tile_bytes)
    return max(1, min(int(requested), fits))
