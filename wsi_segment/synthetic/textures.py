"""Procedural H&E-like textures for the four LUAD-HistoSeg classes.

Every random number is a hash of (seed, position), never a stateful draw, so a slide
rendered tile by tile is seamless and a region renders identically whatever tile it
falls in. Colours are built in optical-density space from haematoxylin and eosin stain
vectors (Ruifrok & Johnston), so the classes share one palette and differ by *texture*
(nucleus size, density, shape, fibres), not only by mean colour:

- TE (0) tumour epithelium: nests of large vesicular purple nuclei in lilac cytoplasm.
- NEC (1) necrosis: pale blotchy pink with small dark debris (karyorrhexis).
- LYM (2) lymphocytes: densely packed small, round, very dark nuclei.
- TAS (3) stroma: pink fibrous streaks with sparse spindle nuclei along them.
- 255: background, pure white.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("TE", "NEC", "LYM", "TAS")
# the LUAD-HistoSeg classes the textures imitate, spelled out (the dataset's class_titles)
CLASS_TITLES: dict[str, str] = {
    "TE": "Tumor epithelial",
    "NEC": "Necrosis",
    "LYM": "Lymphocyte",
    "TAS": "Tumor-associated stroma",
}
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (205, 51, 51),
    (0, 255, 0),
    (65, 105, 225),
    (255, 165, 0),
)
BACKGROUND = 255

_H = np.array([0.56, 0.76, 0.33])  # haematoxylin OD direction (purple-blue)
_E = np.array([0.17, 0.87, 0.44])  # eosin OD direction (pink)
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class Stain:
    """Per-slide (or per-patch) stain strength: multiplies H and E concentrations."""

    h: float = 1.0
    e: float = 1.0


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrap-around arithmetic is intended)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = h ^ (h >> np.uint64(31))
    return mixed


def _hash(seed: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from integer coordinates; same inputs, same numbers."""
    with np.errstate(over="ignore"):
        h = _mix(np.full(np.broadcast_shapes(*(c.shape for c in coords)), seed, np.uint64))
        for c in coords:
            h = _mix(
                h ^ (np.asarray(c).astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            )
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def value_noise(y: np.ndarray, x: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1] at feature size `scale` px (y, x broadcast)."""
    gy, gx = y / scale, x / scale
    iy, ix = np.floor(gy), np.floor(gx)
    fy, fx = gy - iy, gx - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    iy, ix = iy.astype(np.int64), ix.astype(np.int64)
    v00, v01 = _hash(seed, iy, ix), _hash(seed, iy, ix + 1)
    v10, v11 = _hash(seed, iy + 1, ix), _hash(seed, iy + 1, ix + 1)
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def fbm(y: np.ndarray, x: np.ndarray, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1]."""
    total = value_noise(y, x, scale, seed)
    amp, norm = 1.0, 1.0
    for k in range(1, octaves):
        amp *= 0.5
        total = total + amp * value_noise(y, x, scale / 2**k, seed + 7919 * k)
        norm += amp
    return total / norm


def _nuclei(
    y: np.ndarray,
    x: np.ndarray,
    seed: int,
    cell: float,
    presence: float | Callable[[np.ndarray, np.ndarray], np.ndarray],
    radius: tuple[float, float],
    elong: tuple[float, float],
    angle: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Jittered-grid ellipses: (ink in [0, 1], normalised distance to the nearest centre).

    One candidate nucleus per `cell` px; a nucleus never reaches beyond the 3x3 cells
    around its own, so only those are tested. `presence` may be a field f(y, x) -> [0, 1]
    so nuclei cluster (tumour nests).
    """
    cy = np.floor(y[:, 0] / cell).astype(np.int64)
    cx = np.floor(x[0, :] / cell).astype(np.int64)
    gy = np.arange(cy.min() - 1, cy.max() + 2)[:, None]
    gx = np.arange(cx.min() - 1, cx.max() + 2)[None, :]
    u = [_hash(seed + k, gy, gx) for k in range(7)]
    cen_y, cen_x = (gy + 0.15 + 0.7 * u[0]) * cell, (gx + 0.15 + 0.7 * u[1]) * cell
    r = radius[0] + (radius[1] - radius[0]) * u[2]
    e = elong[0] + (elong[1] - elong[0]) * u[3]
    r_major = np.minimum(r * np.sqrt(e), 0.8 * cell)
    r_minor = r_major / e
    theta = np.pi * u[4] if angle is None else angle + 0.5 * (u[4] - 0.5)
    pres = presence(cen_y, cen_x) if callable(presence) else presence
    alive = u[5] < pres
    ink = np.zeros(y.shape[0:1] + x.shape[1:], np.float64)
    dmin = np.full_like(ink, 9.0)
    oy, ox = (cy - gy[0, 0])[:, None], (cx - gx[0, 0])[None, :]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            iy, ix = oy + dy - 1, ox + dx - 1
            ddy, ddx = y - cen_y[iy, ix], x - cen_x[iy, ix]
            c, s = np.cos(theta[iy, ix]), np.sin(theta[iy, ix])
            a, b = (ddx * c + ddy * s) / r_major[iy, ix], (-ddx * s + ddy * c) / r_minor[iy, ix]
            d = np.sqrt(a * a + b * b)
            d = np.where(alive[iy, ix], d, 9.0)
            edge = np.clip((1.0 - d) * r_minor[iy, ix] / 1.2, 0.0, 1.0)
            ink = np.maximum(ink, edge * (0.75 + 0.5 * u[6][iy, ix]))
            dmin = np.minimum(dmin, d)
    return ink, dmin


def _class_od(
    cls: int, y: np.ndarray, x: np.ndarray, seed: int, px_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps of one class over pixel grid (y, x)."""
    s = seed * 16 + cls * 1000003
    um = 1.0 / px_um  # px per micrometre
    grain = _hash(s + 1, y.astype(np.int64), x.astype(np.int64)) - 0.5
    if cls == 0:  # TE: clustered large vesicular nuclei
        nests = fbm(y, x, 45 * um, s + 2)
        cyto = fbm(y, x, 6 * um, s + 3, 2)
        ink, d = _nuclei(
            y,
            x,
            s + 4,
            9.5 * um,
            lambda cy, cx: 1.4 * (value_noise(cy, cx, 45 * um, s + 2) - 0.25),
            (3.2 * um, 4.8 * um),
            (1.0, 1.7),
        )
        vesic = np.where(d < 0.55, 0.55 + 0.45 * d / 0.55, 1.0)
        lumen = np.clip((0.42 - nests) * 6, 0, 1)
        h = (0.35 + 0.15 * cyto) * (1 - 0.6 * lumen) + 1.3 * ink * vesic
        e = (0.45 + 0.25 * cyto) * (1 - 0.75 * lumen)
    elif cls == 1:  # NEC: pale blotchy pink with debris
        blot = fbm(y, x, 18 * um, s + 2)
        ink, _ = _nuclei(y, x, s + 4, 5.5 * um, 0.35, (0.7 * um, 1.7 * um), (1.0, 2.2))
        h = 0.08 + 0.18 * blot + 1.2 * ink
        e = 0.35 + 0.45 * blot
    elif cls == 2:  # LYM: dense small dark round nuclei
        ink, _ = _nuclei(y, x, s + 4, 5.0 * um, 0.95, (2.3 * um, 2.8 * um), (1.0, 1.15))
        back = fbm(y, x, 8 * um, s + 2, 2)
        h = 0.25 + 0.15 * back + 1.9 * ink
        e = 0.3 + 0.15 * back
    else:  # TAS: oriented fibres + spindle nuclei
        base = np.pi * _hash(s + 9, np.zeros(1, np.int64))[0]
        warp = 25 * um * (value_noise(y, x, 60 * um, s + 5) - 0.5)  # wavy, not straight
        u = x * np.cos(base) + y * np.sin(base)
        v = -x * np.sin(base) + y * np.cos(base) + warp
        fib = 0.7 * value_noise(v, u / 12, 6 * um, s + 6) + 0.3 * value_noise(
            v, u / 6, 2.5 * um, s + 7
        )
        ink, _ = _nuclei(y, x, s + 4, 16 * um, 0.5, (2.2 * um, 2.8 * um), (4.0, 6.0), angle=base)
        h = 0.06 + 1.2 * ink
        e = 0.15 + 1.3 * np.clip(fib - 0.25, 0, 1)
    return h + 0.04 * grain, e + 0.05 * grain


def render_region(
    labels: np.ndarray,
    origin: tuple[int, int],
    seed: int,
    stain: Stain = Stain(),
    px_um: float = 1.0,
) -> np.ndarray:
    """RGB uint8 for `labels` placed at `origin` (x, y) of an infinite seeded texture plane."""
    labels = np.asarray(labels)
    hgt, wid = labels.shape
    y = (np.arange(hgt, dtype=np.float64) + origin[1])[:, None]
    x = (np.arange(wid, dtype=np.float64) + origin[0])[None, :]
    od = np.zeros((hgt, wid, 3), np.float32)
    for cls in np.unique(labels):
        if cls == BACKGROUND:
            continue
        if cls > 3:
            raise ValueError(f"label {cls} is not a class (0..3) nor background (255)")
        rows, cols = (
            np.nonzero(np.any(labels == cls, axis=1))[0],
            np.nonzero(np.any(labels == cls, axis=0))[0],
        )
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        h, e = _class_od(int(cls), y[r0:r1], x[:, c0:c1], seed, px_um)
        val = np.clip(h, 0, None)[..., None] * (stain.h * _H) + np.clip(e, 0, None)[..., None] * (
            stain.e * _E
        )
        sel = labels[r0:r1, c0:c1] == cls
        od[r0:r1, c0:c1][sel] = val[sel]
    rgb = 255.0 * np.exp(-od)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def render_tissue(
    labels: np.ndarray, rng: np.random.Generator, *, px_um: float = 1.0
) -> np.ndarray:
    """H&E-like RGB (H, W, 3) uint8 for a label map (0..3 = TE, NEC, LYM, TAS; 255 = white).

    `rng` picks the texture seed, a random position in the texture plane and a mild stain
    jitter, so two calls give different but equally plausible patches. `px_um` is the
    pixel size the texture is drawn at (1.0 = 10x, LUAD-HistoSeg's resolution).
    """
    seed = int(rng.integers(0, 2**31))
    origin = (int(rng.integers(0, 1 << 20)), int(rng.integers(0, 1 << 20)))
    stain = Stain(h=float(rng.uniform(0.85, 1.15)), e=float(rng.uniform(0.85, 1.15)))
    return render_region(labels, origin, seed, stain, px_um)
