"""Where the networks run (a requested device checked against what torch sees), their
autocast, and a batch a GPU's memory holds.

The precision rule is `models.runtimes.decision.precision_decision`, which only the run
policy calls; it reads the CPU's bf16 hardware from `models.cpu`'s flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from wsi_segment.errors import ConfigError


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
                f"(torch {torch.__version__}: {cuda_start_error()}); use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible"
            )
        return dev
    raise ConfigError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:<index>")


def cuda_start_error() -> str:
    """Why torch's CUDA does not start in this process, in torch's own words (the first line
    of `torch.cuda.init`'s error: no driver, a driver too old for this build, no device)."""
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError, or an AssertionError of its build
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    return "torch finds no CUDA GPU"


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
