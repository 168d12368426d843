"""What a chunk reports: polygons simplified in the writer, exact ones only when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_segment.models.labels import NODATA, UNCLASSIFIED
from wsi_segment.pipeline.outputs.chunk_summary import (
    ChunkOutcome,
    block_polygons,
    slide_area_px,
    summarise_block,
)
from wsi_segment.wsi.tiling import ChunkSpec

K = 4
LUAD = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"


def _mask_block() -> tuple[ChunkSpec, np.ndarray, np.ndarray]:
    """A pathologist's LUAD-HistoSeg mask as a chunk's labels (background 4 -> NODATA)."""
    labels = np.asarray(Image.open(sorted(LUAD.glob("*/mask/*.png"))[0])).astype(np.uint8)
    labels = np.where(labels < K, labels, 255).astype(np.uint8)
    h, w = labels.shape
    spec = ChunkSpec(1, 2, (0, 0, 4 * w, 4 * h), ((0, 0),), (300, 50, 300 + w, 50 + h))
    probs = np.zeros((K, h, w), np.uint8)
    return spec, labels, probs


def _summary(
    spec: ChunkSpec,
    labels: np.ndarray,
    probs: np.ndarray,
    tolerance: float,
    keep_exact: bool,
    extent: tuple[float, float],
    cell: int,
) -> ChunkOutcome:
    """`summarise_block` of a block one tile ran for (K classes), traced in this thread."""
    return summarise_block(spec, 1, labels, probs, K, tolerance, keep_exact, extent, cell, None)


def _ends_at(spec: ChunkSpec) -> tuple[float, float]:
    """The extent of a slide that ends where the block does: no pixel is cut by its edge."""
    return float(spec.out_box[2]), float(spec.out_box[3])


def _per_output_class(values: np.ndarray) -> np.ndarray:
    """(K + 1,) pixels of each output class: the K classes, then Unclassified."""
    n = np.bincount(values.ravel(), minlength=256)
    return np.append(n[:K], n[UNCLASSIFIED])


def _area(wkb: dict[int, list[bytes]]) -> dict[int, float]:
    return {c: float(sum(shapely.area(shapely.from_wkb(ws)))) for c, ws in wkb.items()}


def test_writer_simplifies_and_keeps_exact_polygons_only_when_asked():
    spec, labels, probs = _mask_block()
    ends = _ends_at(spec)
    exact = block_polygons(spec, labels, K, tolerance=0.0, cell=0)
    plain = _summary(spec, labels, probs, tolerance=1.0, keep_exact=False, extent=ends, cell=0)
    assert plain.exact_polygons == {}
    assert set(plain.polygons) == set(exact)
    verts = {c: sum(map(shapely.get_num_coordinates, shapely.from_wkb(ws))) for c, ws in
             plain.polygons.items()}  # fmt: skip
    for c, ws in exact.items():
        assert verts[c] < sum(map(shapely.get_num_coordinates, shapely.from_wkb(ws)))
    roi = _summary(spec, labels, probs, tolerance=1.0, keep_exact=True, extent=ends, cell=0)
    assert roi.polygons == plain.polygons
    assert roi.exact_polygons == exact
    # exact: the areas are the pixel counts
    counts = np.bincount(labels.ravel(), minlength=256)[:K]
    assert _area(roi.exact_polygons) == {c: float(counts[c]) for c in exact}
    zero = _summary(spec, labels, probs, tolerance=0.0, keep_exact=True, extent=ends, cell=0)
    assert zero.polygons == zero.exact_polygons == exact


def test_areas_count_only_the_part_of_edge_pixels_on_the_slide():
    """The slide ends 0.5 output px into the block's last column and 0.25 px into its last
    row: those pixels count for that part, the exact polygons cut to the slide agree, and a
    block wholly on the slide reports its counts."""
    spec, labels, probs = _mask_block()
    labels[-3:, -3:] = UNCLASSIFIED  # gated tissue in the corner counts for its part too
    x1, y1 = spec.out_box[2], spec.out_box[3]
    extent = (x1 - 0.5, y1 - 0.75)
    out = _summary(spec, labels, probs, tolerance=0.0, keep_exact=True, extent=extent, cell=0)
    counts = _per_output_class(labels).astype(float)
    last_col = _per_output_class(labels[:-1, -1])
    last_row = _per_output_class(labels[-1, :-1])
    corner = _per_output_class(labels[-1:, -1])
    want = counts - 0.5 * last_col - 0.75 * last_row - (1 - 0.5 * 0.25) * corner
    area = slide_area_px([out], extent)
    np.testing.assert_allclose(area, want, rtol=0, atol=1e-9)
    slide = shapely.box(0, 0, *extent)
    for c, ws in out.exact_polygons.items():
        cut = float(
            shapely.area(shapely.intersection(shapely.union_all(shapely.from_wkb(ws)), slide))
        )
        assert cut == pytest.approx(area[c], rel=1e-12)
    inside = _summary(
        spec, labels, probs, tolerance=0.0, keep_exact=False, extent=(x1 + 3.0, y1), cell=0
    )
    assert inside.edge_counts is None
    assert np.array_equal(slide_area_px([inside], (x1 + 3.0, y1)), counts)


def test_slide_totals_are_the_same_bytes_whatever_the_chunking():
    """Counts, probability sums and edge counts are integers, and the slide's polygons are
    pieces of the global tile-core grid: one block or the same labels cut into four chunks
    give identical totals, areas and WKB pieces (float sums per chunk did not)."""
    spec, labels, probs = _mask_block()
    rng = np.random.default_rng(0)
    probs[:] = rng.integers(0, 256, probs.shape, dtype=np.uint8)
    x0, y0, x1, y1 = spec.out_box
    cell = 10
    extent = (x1 - 0.3, y1 - 0.7)
    whole = _summary(spec, labels, probs, tolerance=1.0, keep_exact=True, extent=extent, cell=cell)
    ys, xs = (y1 - y0) // 2 // cell * cell, (x1 - x0) // 2 // cell * cell
    parts = []
    for by, bx in ((0, 0), (0, xs), (ys, 0), (ys, xs)):
        box = (x0 + bx, y0 + by, x0 + (xs if not bx else x1 - x0), y0 + (ys if not by else y1 - y0))
        part = ChunkSpec(0, 0, (0, 0, 1, 1), ((0, 0),), box)
        sub = (slice(by, box[3] - y0), slice(bx, box[2] - x0))
        parts.append(
            _summary(part, labels[sub], probs[(slice(None), *sub)], 1.0, True, extent, cell)
        )
    assert whole.prob_sums.dtype == np.int64
    np.testing.assert_array_equal(sum(p.prob_sums for p in parts), whole.prob_sums)
    np.testing.assert_array_equal(sum(p.counts for p in parts), whole.counts)
    assert slide_area_px(parts, extent).tobytes() == slide_area_px([whole], extent).tobytes()
    for kind in ("polygons", "exact_polygons"):
        joined: dict[int, list[bytes]] = {}
        for p in parts:
            for c, ws in getattr(p, kind).items():
                joined.setdefault(c, []).extend(ws)
        want = getattr(whole, kind)
        assert {c: sorted(ws) for c, ws in joined.items()} == {
            c: sorted(ws) for c, ws in want.items()
        }


def test_unclassified_tissue_is_output_class_k_and_the_rest_is_unchanged():
    """Pixels of a gated tile (UNCLASSIFIED) are counted, traced and simplified as output
    class K; the classes' polygons and counts are those of the block with that tile
    removed, so a block without gated tiles reports exactly what it did before."""
    spec, labels, probs = _mask_block()
    probs[:] = 200  # every class stored at 200/255 where it is labelled
    ends = _ends_at(spec)
    gated = labels.copy()
    gated[:40, :60] = np.where(gated[:40, :60] == NODATA, NODATA, UNCLASSIFIED)
    n_unclassified = int((gated == UNCLASSIFIED).sum())
    assert n_unclassified > 0
    out = _summary(spec, gated, probs, tolerance=1.0, keep_exact=True, extent=ends, cell=0)
    assert out.counts.shape == out.prob_sums.shape == (K + 1,)
    np.testing.assert_array_equal(out.counts, _per_output_class(gated))
    assert out.counts[K] == n_unclassified and out.prob_sums[K] == 0.0
    np.testing.assert_array_equal(out.prob_sums[:K], out.counts[:K] * 200)
    assert _area(out.exact_polygons)[K] == float(n_unclassified)
    assert K in out.polygons  # simplified with the classes, edge-to-edge
    plain = _summary(spec, labels, probs, tolerance=1.0, keep_exact=True, extent=ends, cell=0)
    assert plain.counts[K] == 0 and K not in plain.polygons
    assert plain.counts[:K].sum() == out.counts.sum()  # the same tissue, now K + 1 classes
    removed = np.where(gated == UNCLASSIFIED, NODATA, gated).astype(np.uint8)
    assert block_polygons(spec, removed, K, tolerance=0.0, cell=0) == {
        c: ws for c, ws in out.exact_polygons.items() if c != K
    }
