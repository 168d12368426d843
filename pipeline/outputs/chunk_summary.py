"""What one chunk reports back to the slide: class counts, probability sums and polygons.

Small by design (thousands fit in memory); the slide's summary, GeoJSON and statistics are
merged from these in `pipeline.outputs.finish_outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from wsi_segment.models.labels import NODATA as NODATA  # the one definition, re-exported
from wsi_segment.pipeline.outputs.polygons import label_block_polygons, simplified_block_polygons
from wsi_segment.wsi.tiling import ChunkSpec


@dataclass
class ChunkOutcome:
    """What a chunk reports back: small, so thousands of them fit in memory."""

    row: int
    col: int
    tiles_run: int
    counts: np.ndarray  # (K,) output pixels per class
    prob_sums: np.ndarray  # (K,) sum of class-k probability over pixels labelled k
    polygons: dict[int, list[bytes]]  # class -> WKB polygons in output pixel coordinates
    bytes_from_model: int = 0  # what crossed from the model's device for this chunk
    # class -> WKB of the unsimplified polygons (exact to the raster), kept only when asked
    # (a `--roi` run's areas); `polygons` itself is simplified when the tolerance is > 0
    exact_polygons: dict[int, list[bytes]] = field(default_factory=dict)
    # (K,) output px^2 of each class on the slide: `counts`, less the parts of the last
    # column and row of output pixels that hang over the slide's edge (None: `counts`)
    areas: np.ndarray | None = None

    def area_px(self) -> np.ndarray:
        """(K,) float64 output px^2 of each class on the slide."""
        return self.areas if self.areas is not None else self.counts.astype(np.float64)


def summarise_block(
    spec: ChunkSpec,
    tiles_run: int,
    labels: np.ndarray,
    probs_u8: np.ndarray,
    k: int,
    tolerance: float = 0.0,
    keep_exact: bool = False,
    extent: tuple[float, float] | None = None,
) -> ChunkOutcome:
    """Per-class counts, areas, probability sums and polygons of one output block:
    simplified with `tolerance` (output px, 0: exact), plus the exact ones when `keep_exact`.
    `extent`: the slide's (width, height) in output px, which the areas are cut to."""
    counts, prob_sums = block_statistics(labels, probs_u8, k)
    wkb = block_polygons(spec, labels, k, tolerance)
    exact = {}
    if keep_exact:
        exact = wkb if tolerance <= 0 else block_polygons(spec, labels, k)
    areas = block_areas(labels, k, spec.out_box, extent) if extent is not None else None
    return ChunkOutcome(
        spec.row, spec.col, tiles_run, counts, prob_sums, wkb, exact_polygons=exact, areas=areas
    )


def block_areas(
    labels: np.ndarray, k: int, out_box: tuple[int, int, int, int], extent: tuple[float, float]
) -> np.ndarray | None:
    """(K,) output px^2 of each class on the slide: an output pixel counts for its part on
    the slide (the raster's last column and row can hang up to a pixel over the slide's
    edge, which is no tissue). None when the block lies wholly on the slide (= counts)."""
    h, w = labels.shape
    x0, y0 = out_box[0], out_box[1]
    if x0 + w <= extent[0] and y0 + h <= extent[1]:
        return None
    wx = np.clip(extent[0] - np.arange(x0, x0 + w, dtype=np.float64), 0.0, 1.0)
    wy = np.clip(extent[1] - np.arange(y0, y0 + h, dtype=np.float64), 0.0, 1.0)
    weights = np.outer(wy, wx).ravel()
    areas: np.ndarray = np.bincount(labels.ravel(), weights=weights, minlength=256)[:k]
    return areas


def block_statistics(
    labels: np.ndarray, probs_u8: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(K,) output pixels per class and (K,) sums of class-k probability over them."""
    counts = np.bincount(labels.ravel(), minlength=256)[:k].astype(np.int64)
    prob_sums = np.zeros(k, dtype=np.float64)
    for c in range(k):
        sel = labels == c
        if counts[c]:
            prob_sums[c] = probs_u8[c][sel].sum(dtype=np.float64) / 255.0
    return counts, prob_sums


def block_polygons(
    spec: ChunkSpec, labels: np.ndarray, k: int, tolerance: float = 0.0
) -> dict[int, list[bytes]]:
    """Class -> WKB polygons of the block, in output pixel coordinates of the whole map:
    exact (`tolerance` 0), or simplified edge-to-edge with the block's border kept, so the
    slide only has to union them (`polygons.merge_simplified_polygons`)."""
    x0, y0 = spec.out_box[0], spec.out_box[1]
    if tolerance > 0:
        polys = simplified_block_polygons(labels, x0, y0, k, tolerance)
    else:
        polys = label_block_polygons(labels, x0, y0, k, nodata=NODATA)
    return {c: [shapely.to_wkb(p) for p in plist] for c, plist in polys.items() if plist}
