"""The classes a slide's outputs report: the model's K classes, then `Unclassified`.

Tissue the classification gate leaves with no class (label `models.labels.UNCLASSIFIED`) is
reported like a class, with index K after the model's classes (0..K-1), so the chunk
statistics, the polygons, summary.json, the GeoJSON and the overlay handle it with the code
they use for classes, and its area is never missing from the tissue's.

One name per layer: `UNCLASSIFIED` (254) in the class maps in memory, index K in the outputs
(converted here only: `output_ids`, `output_class_counts`), and
`pipeline.outputs.label_image.UNCLASSIFIED_VALUE` (255) in the stored label image (converted
there only: `label_values`, `class_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsi_segment.models.labels import UNCLASSIFIED, UNCLASSIFIED_COLOR, UNCLASSIFIED_NAME

Color = tuple[int, int, int]


def output_classes(
    names: Sequence[str], colors: Sequence[Sequence[int]]
) -> tuple[list[str], list[Color]]:
    """The K model classes and colours, then `Unclassified` and its grey (index K)."""
    rgb = [(int(c[0]), int(c[1]), int(c[2])) for c in colors]
    return [*map(str, names), UNCLASSIFIED_NAME], [*rgb, UNCLASSIFIED_COLOR]


def output_class_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """(K + 1,) int64 pixels of each output class among label ids: the K classes, then
    `Unclassified` (K); NODATA is not counted."""
    per_id = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256)
    return np.append(per_id[:k], per_id[UNCLASSIFIED]).astype(np.int64)


def output_ids(labels: np.ndarray, k: int) -> np.ndarray:
    """Label ids with `UNCLASSIFIED` as K (its output index); others unchanged (NODATA stays).
    `labels` itself when no pixel is unclassified, else a copy."""
    unclassified = labels == UNCLASSIFIED
    if not unclassified.any():
        return labels
    out = labels.copy()
    out[unclassified] = k
    return out
