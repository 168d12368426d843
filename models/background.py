"""LUAD-style background: white glass (grey > 200) minus specks smaller than 50 pixels.

Matches the official code (cv2 RGB->grey, threshold > 200, skimage
remove_small_objects(min_size=50, connectivity=1)) in pure torch, so models/ needs no
OpenCV or scikit-image and runs on the GPU too.

The grey is OpenCV's own 8-bit rule (imgproc's RGB2Gray for uchar): BT.601 weights
0.299 / 0.587 / 0.114 as 15-bit integers (9798 / 19235 / 3735, summing to 2^15), rounded
by adding 2^14 before the shift. Other fixed-point weights differ by one grey level on
some pixels, and at the threshold that moves a pixel in or out of the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GREY_THRESHOLD = 200
MIN_OBJECT_SIZE = 50
GREY_WEIGHTS = (9798, 19235, 3735)  # R, G, B; OpenCV's RY15, GY15, BY15
GREY_SHIFT = 15


def grey_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """OpenCV's RGB->grey on uint8 (N, 3, H, W): (9798 R + 19235 G + 3735 B + 2^14) >> 15."""
    r, g, b = (rgb[:, i].to(torch.int32) for i in range(3))
    wr, wg, wb = GREY_WEIGHTS
    return (r * wr + g * wg + b * wb + (1 << (GREY_SHIFT - 1))) >> GREY_SHIFT


def _neighbour_max(labels: torch.Tensor) -> torch.Tensor:
    """Max over each pixel and its 4 neighbours (labels (N, H, W), zero padding)."""
    p = F.pad(labels, (1, 1, 1, 1))
    out = torch.maximum(labels, p[:, :-2, 1:-1])
    out = torch.maximum(out, p[:, 2:, 1:-1])
    out = torch.maximum(out, p[:, 1:-1, :-2])
    return torch.maximum(out, p[:, 1:-1, 2:])


def remove_small_objects(mask: torch.Tensor, min_size: int = MIN_OBJECT_SIZE) -> torch.Tensor:
    """Drop 4-connected components with fewer than `min_size` pixels from bool (N, H, W).

    Labels spread by max over 4-neighbours for min_size - 1 steps, enough to flood any
    component smaller than min_size. A label group is a whole component when none of its
    pixels touches a foreground pixel with another label; such groups smaller than
    min_size are removed. Larger components are never removed (their groups either touch
    other labels or have >= min_size pixels).
    """
    if min_size <= 1 or not bool(mask.any()):
        return mask.clone()
    n, h, w = mask.shape
    dtype = torch.float32 if h * w < 2**24 else torch.float64  # ids exact in either
    fg = mask.to(dtype)
    ids = torch.arange(1, h * w + 1, dtype=dtype, device=mask.device).view(1, h, w)
    labels = fg * ids
    for _ in range(min_size - 1):
        labels = _neighbour_max(labels) * fg
    # Pixels touching a foreground neighbour with a different label: the group is partial.
    p = F.pad(labels, (1, 1, 1, 1))
    neighbours = torch.stack([p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]])
    conflict = ((neighbours > 0) & (neighbours != labels)).any(dim=0) & mask
    offset = torch.arange(n, device=mask.device).view(n, 1, 1) * (h * w + 1)
    flat = (labels.long() + offset).flatten()
    bins = n * (h * w + 1)
    size = torch.bincount(flat, minlength=bins)
    partial = torch.bincount(flat, weights=conflict.flatten().to(torch.float64), minlength=bins) > 0
    small = (size < min_size) & ~partial
    return mask & ~small[flat].view(n, h, w)


def background_mask(
    rgb: torch.Tensor, threshold: int = GREY_THRESHOLD, min_size: int = MIN_OBJECT_SIZE
) -> torch.Tensor:
    """bool (N, H, W): grey > threshold, small white specks (< min_size px) removed."""
    return remove_small_objects(grey_uint8(rgb) > threshold, min_size)
