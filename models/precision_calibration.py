"""Whether precision 'auto' runs bf16: decided by the machine and the model only.

bf16 is faster where the CPU has it in hardware for the runtime that runs the model
(torch: AMX; OpenVINO: AMX, or AVX512-BF16 on AMD), but whether a model keeps its answers
in bf16 depends on the model, and on real tissue bf16 flips near-ties that synthetic tiles
never show. So a
model runs bf16 under 'auto' only when, on real H&E tiles shipped in the package
(`calibration_tiles/`, CC0 tiles of the CMU-1 slide, lossless, the same bytes everywhere),
and on the model's own validation patches recorded in its folder at training
(models/validation_patches.py; none in older models), its bf16 labels (the slide path's:
gated, `UNCLASSIFIED` included) agree with fp32's on
>= 99.5 % of pixels and no label's area moves by more than 1 % of its fp32 area. Labels
covering less than 1 % of the calibration pixels are judged by the agreement alone (a few
pixels of a class that is nearly absent are not an area). Nothing is timed and nothing looks
at the slide: same model bytes, same machine, same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources

import numpy as np

MIN_AGREEMENT = 0.995  # label agreement with fp32 that bf16 must keep
MAX_AREA_SHIFT = 0.01  # largest change of a label's area, as a fraction of its fp32 area
MIN_AREA = 0.01  # labels below this fraction of the pixels are judged by agreement alone

# (tiles uint8 (N, 3, T, T), bf16 or not) -> the slide path's labels (N, T, T) uint8
Labeller = Callable[[np.ndarray, bool], np.ndarray]


def calibration_tiles(tile_size: int, own: np.ndarray | None = None) -> np.ndarray:
    """The shipped real tiles, then the model's `own` validation patches (uint8 (N, 3, H, W)),
    as uint8 (N, 3, T, T), centre-cropped or mirror-padded to `tile_size` with integer
    operations only."""
    from PIL import Image

    folder = resources.files("wsi_segment.models") / "calibration_tiles"
    tiles = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".png"):
            continue
        with entry.open("rb") as f, Image.open(f) as im:
            rgb = np.asarray(im.convert("RGB"))
        tiles.append(fit_tile(rgb, tile_size))
    if own is not None:
        tiles += [fit_tile(patch, tile_size) for patch in own.transpose(0, 2, 3, 1)]
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2))


def fit_tile(rgb: np.ndarray, size: int) -> np.ndarray:
    """`rgb` (H, W, 3) centre-cropped, or mirror-padded then cropped, to `size` x `size`."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        py, px = max(0, size - h), max(0, size - w)
        rgb = np.pad(rgb, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), "symmetric")
        h, w = rgb.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[y : y + size, x : x + size])


@dataclass(frozen=True)
class PrecisionCalibration:
    """fp32 vs bf16 labels on the real calibration tiles: how far bf16 moves the answer."""

    tiles: int
    tile_size: int
    agreement: float  # fraction of pixels whose label is the same in both
    max_area_shift: float  # largest |area_bf16 - area_fp32| / area_fp32 over judged labels
    where: str = "the CPU has AMX"  # why bf16 was a candidate (the hardware, the runtime)
    area_shifts: dict[str, float] = field(default_factory=dict)  # label -> relative shift
    own_patches: int = 0  # of `tiles`, the model's own validation patches

    @property
    def bf16_chosen(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.max_area_shift <= MAX_AREA_SHIFT

    def reason(self) -> str:
        """One line a user can read in summary.json or the log."""
        verdict = "bf16" if self.bf16_chosen else "fp32"
        own = (
            f" ({self.own_patches} of them the model's validation patches)"
            if self.own_patches
            else ""
        )
        return (
            f"{verdict}: {self.where}, and on {self.tiles} real H&E calibration tiles{own} of "
            f"{self.tile_size} px bf16 kept {100 * self.agreement:.2f} % of fp32's labels "
            f"(needs >= {100 * MIN_AGREEMENT:.1f} %) and moved a label's area by at most "
            f"{100 * self.max_area_shift:.2f} % (needs <= {100 * MAX_AREA_SHIFT:.0f} %)"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "chosen": "bf16" if self.bf16_chosen else "fp32",
            "reason": self.reason(),
        }


def compare_labels(ref: np.ndarray, low: np.ndarray) -> tuple[float, dict[str, float]]:
    """(agreement, {label: relative area shift}) of two label maps of the same pixels; the
    shift is judged for labels with >= MIN_AREA of the pixels in either map."""
    agreement = float(np.mean(ref == low))
    total = ref.size
    ref_counts = np.bincount(ref.ravel(), minlength=256)
    low_counts = np.bincount(low.ravel(), minlength=256)
    shifts = {}
    for label in np.flatnonzero(np.maximum(ref_counts, low_counts) >= MIN_AREA * total):
        a, b = int(ref_counts[label]), int(low_counts[label])
        shifts[str(label)] = abs(b - a) / a if a else float("inf")
    return agreement, shifts


def calibrate_bf16(
    labels_of: Labeller, tile_size: int, where: str, own: np.ndarray | None = None
) -> PrecisionCalibration:
    """Label the calibration tiles (with the model's `own` validation patches) in fp32 and in
    bf16 and compare them, all pixels pooled."""
    x = calibration_tiles(tile_size, own)
    ref = labels_of(x, False)
    low = labels_of(x, True)
    agreement, shifts = compare_labels(ref, low)
    return PrecisionCalibration(
        tiles=len(x),
        tile_size=tile_size,
        agreement=agreement,
        max_area_shift=max(shifts.values(), default=0.0),
        where=where,
        area_shifts=shifts,
        own_patches=0 if own is None else len(own),
    )
