"""A corpus of thumbnails for tissue detection, made from real texture and real stain vectors.

Texture: the real H&E slide OS-1-detail (tissue edge to edge) split by colour deconvolution
(Ruifrok & Johnston 2001) into haematoxylin and eosin concentrations, then re-rendered with
Beer-Lambert (I = 255 * 10^-OD) as H&E, as IHC (DAB with haematoxylin counterstain), pale or
over-stained, inside known shapes on glass: the truth mask is exact by construction. Marker
pen strokes and dark slide edges are drawn over it and removed from the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tests.conftest import DATA_DIR
from wsi_segment.wsi.slide import open_slide

# Ruifrok & Johnston optical-density vectors (R, G, B), as in QuPath and scikit-image
HAEMATOXYLIN = (0.650, 0.704, 0.286)
EOSIN = (0.072, 0.990, 0.105)
DAB = (0.268, 0.570, 0.776)
# Haematoxylin blued as IHC counterstains often are: red absorbed more than green, so pale
# nuclei read blue and green above red (the colour that passed for blue pen ink).
BLUED_HAEMATOXYLIN = (0.74, 0.60, 0.30)

PENS = {"blue": (40, 80, 170), "pale blue": (120, 170, 200), "green": (40, 140, 60)}
BLACK = (25, 25, 30)
GLASS = (238, 236, 240)


def unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, np.float64)
    return a / np.linalg.norm(a)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)


def render(od: np.ndarray) -> np.ndarray:
    return np.clip(np.round(255.0 * 10.0 ** (-od)), 0, 255).astype(np.uint8)


def deconvolve_he(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) concentrations of haematoxylin, eosin and the residual (their cross product)."""
    h, e = unit(HAEMATOXYLIN), unit(EOSIN)
    basis = np.stack([h, e, unit(tuple(np.cross(h, e)))])
    return optical_density(rgb) @ np.linalg.inv(basis)


def restain(
    conc: np.ndarray,
    h_vec: tuple[float, float, float] = HAEMATOXYLIN,
    h_scale: float = 1.0,
    second: tuple[float, float, float] | None = EOSIN,
    second_scale: float = 1.0,
) -> np.ndarray:
    """Optical density of the same tissue stained with other vectors / amounts."""
    h, e = unit(HAEMATOXYLIN), unit(EOSIN)
    residual = unit(tuple(np.cross(h, e)))
    od = conc[..., :1] * h_scale * unit(h_vec) + conc[..., 2:3] * residual
    if second is not None:
        od = od + conc[..., 1:2] * second_scale * unit(second)
    return od


def os1_concentrations(thumb: int = 367) -> np.ndarray:
    with open_slide(DATA_DIR / "OS-1-detail.ome.tif") as slide:
        rgb, _ = slide.thumbnail(thumb)
    return deconvolve_he(rgb)


STAININGS = {
    "H&E": {},
    "IHC, DAB-negative (pale blued counterstain only)": dict(
        h_vec=BLUED_HAEMATOXYLIN, h_scale=0.6, second=None
    ),
    "IHC, DAB-positive": dict(h_vec=BLUED_HAEMATOXYLIN, h_scale=0.6, second=DAB, second_scale=0.8),
    "IHC, Ruifrok haematoxylin + DAB": dict(second=DAB, second_scale=0.6),
    "pale H&E": dict(h_scale=0.35, second_scale=0.35),
    "over-stained H&E": dict(h_scale=2.5, second_scale=2.0),
}


@dataclass
class Thumb:
    rgb: np.ndarray  # uint8 (h, w, 3)
    truth: np.ndarray  # bool: tissue
    scored: np.ndarray  # bool: pixels scored (a 2 px band around drawn edges is not)
    marks: dict[str, np.ndarray]  # drawn marks (pen, edges): must not be tissue


def shapes(h: int, w: int) -> np.ndarray:
    """Truth: an ellipse, a triangle and a small round piece on glass."""
    yy, xx = np.mgrid[0:h, 0:w]
    ellipse = ((yy - 0.4 * h) / (0.3 * h)) ** 2 + ((xx - 0.35 * w) / (0.27 * w)) ** 2 <= 1
    triangle = (yy > 0.45 * h) & (xx > 0.62 * w) & (yy - 0.45 * h > 0.9 * (0.95 * w - xx))
    blob = (yy - 0.85 * h) ** 2 + (xx - 0.2 * w) ** 2 <= (0.05 * h) ** 2
    return ellipse | (triangle & (yy < 0.92 * h)) | blob


def thumbnail(
    conc: np.ndarray, staining: dict, size: tuple[int, int] = (300, 400), seed: int = 0
) -> Thumb:
    """Texture (tiled by mirroring) inside `shapes`, glass outside, glass noise everywhere."""
    h, w = size
    reps = (-(-h // conc.shape[0]) + 1, -(-w // conc.shape[1]) + 1)
    mirrored = np.concatenate([conc, conc[::-1]], axis=0)
    mirrored = np.concatenate([mirrored, mirrored[:, ::-1]], axis=1)
    tex = np.tile(mirrored, (reps[0], reps[1], 1))[:h, :w]
    truth = shapes(h, w)
    rng = np.random.default_rng(seed)
    glass = optical_density(np.broadcast_to(np.asarray(GLASS, np.uint8), (h, w, 3)))
    od = glass + np.where(truth[..., None], restain(tex, **staining), 0.0)
    od = od + rng.normal(0.0, 0.004, od.shape)
    return Thumb(render(od), truth, np.ones((h, w), bool), {})


def draw(thumb: Thumb, name: str, where: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Opaque mark (pen stroke, dark edge): not tissue; its outline band is not scored."""
    thumb.rgb[where] = colour
    thumb.truth &= ~where
    band = ndimage.binary_dilation(where, iterations=2) & ~ndimage.binary_erosion(
        where, iterations=2
    )
    thumb.scored &= ~band
    thumb.marks[name] = where


def add_pens_and_edges(thumb: Thumb) -> Thumb:
    """Blue, pale blue, green and black strokes over glass and tissue; dark slide edges."""
    h, w = thumb.truth.shape
    yy, xx = np.mgrid[0:h, 0:w]
    draw(thumb, "blue", np.abs((yy - 0.5 * xx) - 0.15 * h) < 5, PENS["blue"])
    draw(thumb, "pale blue", np.abs((yy + 0.4 * xx) - 0.75 * h) < 4, PENS["pale blue"])
    draw(thumb, "green", (np.abs(xx - 0.55 * w) < 4) & (yy > 0.1 * h), PENS["green"])
    circle = np.abs(np.hypot(yy - 0.3 * h, xx - 0.3 * w) - 0.12 * h) < 3
    draw(thumb, "black", circle, BLACK)
    edges = np.zeros((h, w), bool)
    edges[:, :12] = edges[-10:] = True
    draw(thumb, "dark edges", edges, (12, 12, 14))
    grey_edge = np.zeros((h, w), bool)
    grey_edge[:, -14:] = True
    draw(thumb, "dark grey edge", grey_edge, (45, 46, 44))
    return thumb


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
