"""k x k box averaging of RGB images: the one rule by which every thumbnail is shrunk.

Tissue detection (`Slide.thumbnail`), overlay.png and the synthetic slides' pyramid levels all
shrink images this way, so "the thumbnail" means the same pixels wherever it is made. The rule:
each output pixel is the exact mean of its k x k block, rounded half to even (what averaging in
floating point and `np.round` give); blocks that reach past the image are completed with white,
as a slide reader returns white (glass) outside the scan. Integer sums make it exact on every
CPU and several times cheaper than averaging in float.
"""

from __future__ import annotations

import numpy as np

WHITE = 255


def box_mean(img: np.ndarray, k: int) -> np.ndarray:
    """(ceil(H/k), ceil(W/k), C) uint8 block means of an (H, W, C) uint8 image."""
    if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError(f"need an (H, W, C) uint8 image, got {img.dtype} {img.shape}")
    if k < 1:
        raise ValueError(f"block size must be >= 1, got {k}")
    if k == 1:
        return img
    h, w = -(-img.shape[0] // k), -(-img.shape[1] // k)
    pad_y, pad_x = h * k - img.shape[0], w * k - img.shape[1]
    if pad_y or pad_x:
        img = np.pad(img, ((0, pad_y), (0, pad_x), (0, 0)), constant_values=WHITE)
    c, n = img.shape[2], k * k
    # Rows first, then columns, each as k strided adds of whole views (numpy's reduction
    # over a short middle axis is several times slower at the small k of a tissue
    # thumbnail); uint16 holds 256 x 255, and the rounding stays exact integer arithmetic.
    acc = np.uint16 if n <= 256 else np.uint32
    blocks = img.reshape(h, k, w, k, c)
    rows = blocks[:, 0].astype(acc)
    for i in range(1, k):
        np.add(rows, blocks[:, i], out=rows)
    cols = rows.reshape(h, w, k, c)
    sums = cols[:, :, 0].copy()
    for j in range(1, k):
        np.add(sums, cols[:, :, j], out=sums)
    if n & (n - 1):
        q, r = np.divmod(sums, acc(n))
    else:  # a power of two (k = 2, 4, 8, ...): shifts, several times cheaper than a divide
        q, r = np.right_shift(sums, n.bit_length() - 1), np.bitwise_and(sums, n - 1)
    half = n // 2  # a tie (r == n / 2) exists only for an even n: round it to the even q
    q += (r > half) | ((r == half) & (n % 2 == 0) & (q % 2 == 1))
    out: np.ndarray = q.astype(np.uint8)
    return out
