"""The CPU reference of the slide path's reduction, as the pipeline did it before the model
reduced on its device: full float32 maps from `predict`, then numpy core crop, d x d mean,
uint8 quantisation and labels taken from the quantised values (gated pixels whose kept
classes all round to 0 become nodata). Tests compare the on-device reduction against it."""

from __future__ import annotations

import numpy as np


def quantise(probs: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 0..255."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def pooled_cores(seg_probs: np.ndarray, margin: int, core: int, d: int) -> np.ndarray:
    """float32 (N, K, core/d, core/d): each tile's core averaged over d x d blocks."""
    n, k = seg_probs.shape[:2]
    c = seg_probs[:, :, margin : margin + core, margin : margin + core]
    return c.reshape(n, k, core // d, d, core // d, d).mean(axis=(3, 5))


def label_quantised(probs_u8: np.ndarray, nodata: int = 255) -> np.ndarray:
    """Argmax over axis -3 of uint8 probabilities; nodata where all are 0."""
    labels = np.argmax(probs_u8, axis=-3).astype(np.uint8)
    labels[probs_u8.max(axis=-3) == 0] = nodata
    return labels


def near_rounding_boundary(probs: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """True where x * 255 sits within `tol` of a half level: float sums in another order
    (numpy vs torch, another CPU's vector width) may round these one level apart."""
    frac = np.asarray(probs, np.float64) * 255.0 % 1.0
    return np.abs(frac - 0.5) < tol


def unique_positive_max(probs_u8: np.ndarray) -> np.ndarray:
    """True where one class alone holds the largest uint8 value over axis -3, and it is > 0:
    there labels before and after quantisation must agree."""
    top = probs_u8.max(axis=-3, keepdims=True)
    return ((probs_u8 == top).sum(axis=-3) == 1) & (top[..., 0, :, :] > 0)
