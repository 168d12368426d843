"""The slide-wide merge's overlap guard: exactly when subtracting classes changes anything."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, box

from wsi_segment.pipeline.outputs.polygon_merge import _classes_overlap, _remove_overlaps


def _random_classes(seed: int) -> list[MultiPolygon]:
    """Three classes of grid boxes that touch along edges and corners, meet in T-junctions
    (not a valid coverage, yet no shared area) and, for some seeds, overlap."""
    rng = np.random.default_rng(seed)
    classes = []
    for _ in range(3):
        x0, y0 = rng.integers(0, 12, size=2)
        w, h = rng.integers(1, 8, size=2)
        classes.append(MultiPolygon([box(x0, y0, x0 + w, y0 + h)]))
    return classes


@pytest.mark.parametrize("seed", range(40))
def test_the_guard_fires_exactly_when_removing_overlaps_changes_a_class(seed):
    classes = _random_classes(seed)
    changed = [a.wkb != b.wkb for a, b in zip(classes, _remove_overlaps(classes, 0.0), strict=True)]
    assert _classes_overlap(classes) == any(changed)


def test_touching_classes_and_t_junctions_do_not_overlap_though_not_a_coverage():
    left = MultiPolygon([box(0, 0, 10, 10)])
    right = MultiPolygon([box(10, 0, 20, 5), box(10, 5, 20, 10)])  # a T-junction at (10, 5)
    corner = MultiPolygon([box(20, 10, 30, 20)])  # meets `right` at one point
    assert not shapely.coverage_is_valid([left, right, corner])
    assert not _classes_overlap([left, right, corner])
    assert _classes_overlap([left, right, MultiPolygon([box(19, 9, 30, 20)])])


def test_one_class_or_none_cannot_overlap():
    assert not _classes_overlap([])
    assert not _classes_overlap([MultiPolygon([box(0, 0, 1, 1)])])


def test_the_seeds_cover_both_answers():
    answers = {_classes_overlap(_random_classes(s)) for s in range(40)}
    assert answers == {True, False}
    assert any(
        not shapely.coverage_is_valid(c) and not _classes_overlap(c)
        for c in map(_random_classes, range(40))
        if any(a.touches(b) for a, b in itertools.combinations(c, 2))
    )
