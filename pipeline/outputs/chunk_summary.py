"""What one chunk reports back to the slide: class counts, probability sums and polygons.

Small by design (thousands fit in memory); the slide's summary, GeoJSON and statistics are
merged from these in `pipeline.outputs.finish_outputs`. Per-class arrays and polygon keys run
over the output classes (`output_classes`): the model's K classes, then `Unclassified` (K).

Nothing here depends on how the slide was cut into chunks: counts and probability sums are
integers (exact in any grouping; fractions are taken once, over the slide, in
`slide_area_px` and the finish), and polygons are traced and simplified per zarr chunk of the
global grid (`block_polygons`), so `--chunk-tiles` changes no byte of the outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import shapely

from wsi_segment.models.labels import NODATA as NODATA  # re-exported: "not analysed"
from wsi_segment.pipeline.outputs.output_classes import output_class_counts, output_ids
from wsi_segment.pipeline.outputs.polygons import (
    label_block_polygons,
    simplified_block_polygons,
    tracing_session,
)
from wsi_segment.wsi.tiling import ChunkSpec


@dataclass
class ChunkOutcome:
    """What a chunk reports back: small, so thousands of them fit in memory."""

    row: int
    col: int
    tiles_run: int
    counts: np.ndarray  # (K + 1,) output pixels per class, then Unclassified
    # (K + 1,) int64 sum of the uint8 class-k probability (0-255) over pixels labelled k (0 for K)
    prob_sums: np.ndarray
    polygons: dict[int, list[bytes]]  # output class -> WKB polygons in output pixel coordinates
    bytes_from_model: int = 0  # what crossed from the model's device for this chunk
    # class -> WKB of the unsimplified polygons (exact to the raster), kept only when asked
    # (a `--roi` run's areas); `polygons` itself is simplified when the tolerance is > 0
    exact_polygons: dict[int, list[bytes]] = field(default_factory=dict)
    # (3, K + 1) int64 output pixels of each output class in the raster's last column, its last
    # row and their corner where those hang over the slide's edge (None: the block has none)
    edge_counts: np.ndarray | None = None


def output_extent(dimensions: tuple[int, int], level0_per_output: float) -> tuple[float, float]:
    """The slide's (width, height) in output px, from its level-0 `dimensions`: where its
    edge cuts the raster's last column and row (`block_edge_counts`, `slide_area_px`)."""
    return dimensions[0] / level0_per_output, dimensions[1] / level0_per_output


def slide_area_px(outcomes: Iterable[ChunkOutcome], extent: tuple[float, float]) -> np.ndarray:
    """(K + 1,) float64 output px^2 of each output class on the slide of (width, height)
    `extent` output px: pixels count whole, but those of the last column and row only for
    their part on the slide. From integer totals, so the same whatever the chunking."""
    outcomes = list(outcomes)
    counts = np.zeros(len(outcomes[0].counts), np.int64)
    edges = np.zeros((3, len(counts)), np.int64)
    for o in outcomes:
        counts += o.counts
        if o.edge_counts is not None:
            edges += o.edge_counts
    fx, fy = (e - (math.ceil(e) - 1) for e in extent)  # the last column's and row's share
    shares = np.array([fx - 1.0, fy - 1.0, fx * fy - 1.0])
    area: np.ndarray = counts + shares @ edges
    return area


# `block_polygons` itself, or the same function run elsewhere (a polygon process)
BlockPolygons: TypeAlias = Callable[
    [ChunkSpec, np.ndarray, int, float, int], dict[int, list[bytes]]
]


def summarise_block(
    spec: ChunkSpec,
    tiles_run: int,
    labels: np.ndarray,
    probs_u8: np.ndarray,
    k: int,
    tolerance: float,
    keep_exact: bool,
    extent: tuple[float, float],
    cell: int,
    polygons: BlockPolygons | None,
) -> ChunkOutcome:
    """Per-class counts, areas, probability sums and polygons of one output block (`labels`:
    class ids, UNCLASSIFIED, NODATA; `k` model classes): simplified with `tolerance` (output
    px, 0: exact), plus the exact ones when `keep_exact`, per `cell` of the global grid, by
    `polygons` (None: `block_polygons` in this thread). `extent`: the slide's (width,
    height) in output px, which the areas are cut to."""
    trace = polygons or block_polygons
    counts, prob_sums = block_statistics(labels, probs_u8, k)
    wkb = trace(spec, labels, k, tolerance, cell)
    exact = {}
    if keep_exact:
        exact = wkb if tolerance <= 0 else trace(spec, labels, k, 0.0, cell)
    edges = block_edge_counts(labels, k, spec.out_box, extent)
    return ChunkOutcome(
        spec.row,
        spec.col,
        tiles_run,
        counts,
        prob_sums,
        wkb,
        exact_polygons=exact,
        edge_counts=edges,
    )


def block_edge_counts(
    labels: np.ndarray, k: int, out_box: tuple[int, int, int, int], extent: tuple[float, float]
) -> np.ndarray | None:
    """(3, K + 1) output pixels of each output class in the raster's last column (not its last
    row), last row (not last column) and their corner, where the slide's edge cuts them
    (`extent`: its width and height in output px; `slide_area_px` counts them for their
    part). None when the block lies wholly on the slide."""
    h, w = labels.shape
    x0, y0 = out_box[0], out_box[1]
    if x0 + w <= extent[0] and y0 + h <= extent[1]:
        return None
    cut_x = np.arange(x0, x0 + w) + 1 > extent[0]  # columns the slide's edge cuts
    cut_y = np.arange(y0, y0 + h) + 1 > extent[1]
    col = (~cut_y)[:, None] & cut_x[None, :]
    row = cut_y[:, None] & (~cut_x)[None, :]
    corner = cut_y[:, None] & cut_x[None, :]
    return np.stack([output_class_counts(labels[m], k) for m in (col, row, corner)])


def block_statistics(
    labels: np.ndarray, probs_u8: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(K + 1,) output pixels per output class and (K + 1,) sums of the uint8 class-k
    probability (0-255) over them (Unclassified has no probability: 0); all int64."""
    counts = output_class_counts(labels, k)
    prob_sums = np.zeros(k + 1, dtype=np.int64)
    for c in range(k):
        sel = labels == c
        if counts[c]:
            prob_sums[c] = probs_u8[c][sel].sum(dtype=np.int64)
    return counts, prob_sums


def block_polygons(
    spec: ChunkSpec, labels: np.ndarray, k: int, tolerance: float, cell: int
) -> dict[int, list[bytes]]:
    """Output class (0..K, K = Unclassified) -> WKB polygons of the block, in output pixel
    coordinates of the whole map: exact (`tolerance` 0), or simplified edge-to-edge with the
    border kept, so the slide only has to union them (`polygon_merge.merge_simplified_polygons`).

    Traced and simplified per `cell` x `cell` square of the global output grid (a run's zarr
    chunks, `wsi.tiling.STORE_TILES` tile cores, which every write unit holds whole; 0: the
    block as one), each with its border kept: a piece depends on its cell's labels alone, so
    the slide's polygons are the same whatever the chunk size. Cells as large as a zarr chunk
    trace 2.3x faster than cells of one tile core, and pin fewer vertices to cell borders.
    """
    x0, y0 = spec.out_box[0], spec.out_box[1]
    ids = output_ids(labels, k)
    h, w = ids.shape
    step_y, step_x = cell or h, cell or w
    if (cell and (x0 % cell or y0 % cell)) or not h or not w:
        raise ValueError(f"block at ({x0}, {y0}) must start on the {cell} px grid of cells")
    out: dict[int, list[bytes]] = {}
    with tracing_session():
        for cy in range(0, h, step_y):
            for cx in range(0, w, step_x):
                sub = ids[cy : cy + step_y, cx : cx + step_x]
                if tolerance > 0:
                    polys = simplified_block_polygons(sub, x0 + cx, y0 + cy, k + 1, tolerance)
                else:
                    polys = label_block_polygons(sub, x0 + cx, y0 + cy, k + 1, nodata=NODATA)
                for c, plist in polys.items():  # one call per class: GEOS, not Python
                    out.setdefault(c, []).extend(shapely.to_wkb(list(plist)).tolist())
    return {c: out[c] for c in sorted(out) if out[c]}
