"""Whether bf16 pays for this model on this CPU, measured on the run's own tiles.

bf16 autocast is about 3x fp32 on CPUs with AMX, but on a CPU with AVX512-BF16 and no AMX
it measured 0.66-0.78x fp32 (benchmarks/RESULTS.md), and whether it keeps accuracy depends
on the model and the tissue, not on the CPU. So `precision="auto"` on a CPU that has bf16
in hardware does not guess: the first tiles of a run are predicted in both precisions,
timed, and compared, and bf16 is kept only when it is clearly faster and its labels agree
with fp32's (issue 8's goal: >= 99.5 % argmax agreement).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

TRIAL_TILES = 4  # ~200k pixels at 224 px: enough for agreement, ~1.5-2.5 s on 2 cores
MIN_AGREEMENT = 0.995  # argmax agreement with fp32 that bf16 must keep
MIN_SPEEDUP = 1.1  # below this the difference is noise, and fp32 is the exact reference

# (tiles uint8 (N, 3, H, W), autocast dtype or None) -> gated probabilities (N, K, H, W)
Forward = Callable[[torch.Tensor, "torch.dtype | None"], torch.Tensor]


@dataclass(frozen=True)
class PrecisionTrial:
    """fp32 vs bf16 on the same tiles: speed of each and how far bf16 moves the output."""

    tiles: int
    fp32_tiles_per_s: float
    bf16_tiles_per_s: float
    agreement: float  # fraction of pixels whose argmax label is the same in both
    max_prob_diff: float

    @property
    def speedup(self) -> float:
        return self.bf16_tiles_per_s / self.fp32_tiles_per_s if self.fp32_tiles_per_s else 0.0

    @property
    def bf16_chosen(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.speedup >= MIN_SPEEDUP

    def reason(self) -> str:
        """One line a user can read in summary.json or the log."""
        verdict = "bf16 kept" if self.bf16_chosen else "fp32 kept"
        return (
            f"{verdict}: on {self.tiles} tiles bf16 ran {self.speedup:.2f}x the fp32 speed "
            f"(needs >= {MIN_SPEEDUP}) with {100 * self.agreement:.2f} % label agreement "
            f"(needs >= {100 * MIN_AGREEMENT:.1f} %)"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "speedup": self.speedup,
            "chosen": "bf16" if self.bf16_chosen else "fp32",
            "reason": self.reason(),
        }


def run_precision_trial(
    forward: Forward, tiles: torch.Tensor, n_tiles: int = TRIAL_TILES
) -> PrecisionTrial:
    """Predict `n_tiles` tiles in fp32 and in bf16: one warm-up and the best of two timed
    passes each. Fewer tiles (a small first chunk) are repeated, so the batch is the same."""
    if len(tiles) == 0:
        raise ValueError("a precision trial needs at least one tile")
    x = tiles[:n_tiles]
    if len(x) < n_tiles:
        x = x[torch.arange(n_tiles) % len(x)]
    ref, fp32_s = _timed(forward, x, None)
    low, bf16_s = _timed(forward, x, torch.bfloat16)
    agreement = (ref.argmax(1) == low.argmax(1)).float().mean().item()
    return PrecisionTrial(
        tiles=len(x),
        fp32_tiles_per_s=len(x) / fp32_s,
        bf16_tiles_per_s=len(x) / bf16_s,
        agreement=float(agreement),
        max_prob_diff=float((ref - low).abs().max().item()),
    )


def _timed(
    forward: Forward, x: torch.Tensor, dtype: torch.dtype | None, repeats: int = 2
) -> tuple[torch.Tensor, float]:
    """Best of `repeats` timed calls after one that builds the kernels (oneDNN primitives):
    the best is the least disturbed by other threads (a prefetcher decoding beside it)."""
    out = forward(x, dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward(x, dtype)
        best = min(best, time.perf_counter() - t0)
    return out, max(best, 1e-9)
