"""Whether precision 'auto' runs bf16 on this CPU: decided by the machine and the model only.

bf16 autocast is about 3x fp32 on CPUs with AMX, but on a CPU with AVX512-BF16 and no AMX
it measured 0.66-0.78x fp32 (benchmarks/RESULTS.md), and whether it keeps accuracy depends
on the model. A run's outputs must not depend on which tiles it meets first, on the ROI set
or on load, so nothing here is timed and nothing looks at the slide: speed is judged by the
CPU's features (AMX), and accuracy by a calibration on a fixed set of tiles made here from
integers alone (the same bytes on every CPU). The model's argmax labels in bf16 must agree
with fp32's on >= 99.5 % of those pixels. Same model bytes, same machine: same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

CALIBRATION_TILES = 4
MIN_AGREEMENT = 0.995  # argmax agreement with fp32 that bf16 must keep
_SEED = 20261123

# (tiles uint8 (N, 3, H, W), autocast dtype or None) -> gated probabilities (N, K, H, W)
Forward = Callable[[torch.Tensor, "torch.dtype | None"], torch.Tensor]

# H&E-like colours (RGB): glass, eosin pinks, haematoxylin purples, blood
_PALETTE = torch.tensor(
    [
        [236, 234, 238],
        [232, 170, 196],
        [214, 130, 170],
        [190, 110, 160],
        [150, 80, 150],
        [110, 60, 140],
        [70, 40, 110],
        [200, 60, 70],
    ],
    dtype=torch.int16,
)


def calibration_tiles(tile_size: int, n: int = CALIBRATION_TILES) -> torch.Tensor:
    """`n` fixed uint8 tiles (n, 3, T, T) of blobs in H&E colours with fine grain.

    Made from a seeded CPU generator with integer arithmetic only, so every machine and
    torch version that keeps the generator's stream gets the same bytes."""
    g = torch.Generator().manual_seed(_SEED)
    tiles = []
    for i in range(n):
        block = 4 << (i % 3)  # 4, 8, 16 px structures
        cells = -(-tile_size // block)
        idx = torch.randint(0, len(_PALETTE), (cells, cells), generator=g)
        rgb = _PALETTE[idx].permute(2, 0, 1)  # (3, cells, cells)
        rgb = rgb.repeat_interleave(block, 1).repeat_interleave(block, 2)
        rgb = rgb[:, :tile_size, :tile_size]
        grain = torch.randint(-12, 13, (3, tile_size, tile_size), generator=g, dtype=torch.int16)
        tiles.append((rgb + grain).clamp(0, 255).to(torch.uint8))
    return torch.stack(tiles)


@dataclass(frozen=True)
class PrecisionCalibration:
    """fp32 vs bf16 on the fixed calibration tiles: how far bf16 moves the output."""

    tiles: int
    tile_size: int
    agreement: float  # fraction of pixels whose argmax label is the same in both
    max_prob_diff: float

    @property
    def bf16_chosen(self) -> bool:
        return self.agreement >= MIN_AGREEMENT

    def reason(self) -> str:
        """One line a user can read in summary.json or the log."""
        verdict = "bf16" if self.bf16_chosen else "fp32"
        return (
            f"{verdict}: the CPU has AMX, and on {self.tiles} fixed calibration tiles of "
            f"{self.tile_size} px bf16 kept {100 * self.agreement:.2f} % of fp32's labels "
            f"(needs >= {100 * MIN_AGREEMENT:.1f} %)"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "chosen": "bf16" if self.bf16_chosen else "fp32",
            "reason": self.reason(),
        }


def calibrate_bf16(forward: Forward, tile_size: int) -> PrecisionCalibration:
    """Predict the calibration tiles in fp32 and in bf16 and compare their labels."""
    x = calibration_tiles(tile_size)
    ref = forward(x, None)
    low = forward(x, torch.bfloat16)
    agreement = (ref.argmax(1) == low.argmax(1)).float().mean().item()
    return PrecisionCalibration(
        tiles=len(x),
        tile_size=tile_size,
        agreement=float(agreement),
        max_prob_diff=float((ref - low).abs().max().item()),
    )
