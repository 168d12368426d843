"""What a chunk reports: polygons simplified in the writer, exact ones only when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from PIL import Image

from wsi_segment.pipeline.outputs.chunk_summary import block_polygons, summarise_block
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


def _area(wkb: dict[int, list[bytes]]) -> dict[int, float]:
    return {c: float(sum(shapely.area(shapely.from_wkb(ws)))) for c, ws in wkb.items()}


def test_writer_simplifies_and_keeps_exact_polygons_only_when_asked():
    spec, labels, probs = _mask_block()
    exact = block_polygons(spec, labels, K)
    plain = summarise_block(spec, 1, labels, probs, K, tolerance=1.0)
    assert plain.exact_polygons == {}
    assert set(plain.polygons) == set(exact)
    verts = {c: sum(map(shapely.get_num_coordinates, shapely.from_wkb(ws))) for c, ws in
             plain.polygons.items()}  # fmt: skip
    for c, ws in exact.items():
        assert verts[c] < sum(map(shapely.get_num_coordinates, shapely.from_wkb(ws)))
    roi = summarise_block(spec, 1, labels, probs, K, tolerance=1.0, keep_exact=True)
    assert roi.polygons == plain.polygons
    assert roi.exact_polygons == exact
    # exact: the areas are the pixel counts
    counts = np.bincount(labels.ravel(), minlength=256)[:K]
    assert _area(roi.exact_polygons) == {c: float(counts[c]) for c in exact}
    zero = summarise_block(spec, 1, labels, probs, K, tolerance=0.0, keep_exact=True)
    assert zero.polygons == zero.exact_polygons == exact
