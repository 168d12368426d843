"""Optional per-tile QuPath objects: one square per tile with class probabilities as
measurements, so QuPath's *Measure > Show measurement maps* paints probability heat maps.

QuPath reads `"objectType": "tile"` as a tile object (a detection), which measurement maps and
the measurement table handle in the tens of thousands, where one annotation per output pixel
would not. Read from the probability store and the label image strip by strip: memory is
one row of tiles. Tissue is what the label image says was analysed, so a tile whose classes
the classification gate all ruled out (probabilities all 0) is Unclassified tissue, not glass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsi_segment.errors import ConfigError
from wsi_segment.models.labels import UNCLASSIFIED_COLOR, UNCLASSIFIED_NAME
from wsi_segment.pipeline.outputs.label_image import (
    NO_CLASS,
    UNCLASSIFIED_VALUE,
    open_label_levels,
)
from wsi_segment.pipeline.outputs.ome_zarr import ProbabilityStore, open_probability_store
from wsi_segment.wsi.tiling import TileGrid


def iter_tile_features(
    zarr_path: str | Path,
    tile_px: int,
    slide_size: tuple[int, int],
    min_tissue_fraction: float = 0.05,
) -> Iterator[dict[str, Any]]:
    """Yield one QuPath tile feature per `tile_px` x `tile_px` block of output pixels that has
    at least `min_tissue_fraction` tissue (pixels the label image gives a class or
    Unclassified).

    Measurements: "<class> probability" = mean class probability (0-1) over the tile's tissue
    pixels, "Unclassified fraction" (tissue the gate left with no class: probability 0 for
    every class there) and "Tissue fraction". Classification: the class with the highest
    mean, Unclassified counting as probability 1 on its own pixels (so a tile mostly ruled
    out is Unclassified). Geometry in level-0 pixels using the store's `level0_downsample`
    and `offset_level0`, clipped to the slide's level-0 `slide_size` (width, height): the
    raster's last column and row reach up to one output pixel past it, and the fractions
    of such an edge tile count each pixel by its part on the slide (`_on_slide_shares`).
    """
    if tile_px <= 0:
        raise ConfigError(f"tile size must be positive, got {tile_px}")
    store = open_probability_store(zarr_path)
    names = [*store.class_names, UNCLASSIFIED_NAME]
    colors = [list(c) for c in store.colors] + [list(UNCLASSIFIED_COLOR)]
    labels = open_label_levels(zarr_path)[0]
    arr = store.levels[0]
    _, h, w = arr.shape
    for y0 in range(0, h, tile_px):
        strip = np.asarray(arr[:, y0 : y0 + tile_px, :], dtype=np.float64) / 255.0
        value_strip = np.asarray(labels[y0 : y0 + tile_px, :])
        for x0 in range(0, w, tile_px):
            values = value_strip[:, x0 : x0 + tile_px]
            shares = _on_slide_shares(store, slide_size, (x0, y0), values.shape)
            edge = None if shares is None else slide_size  # where the square is cut
            block = strip[:, :, x0 : x0 + tile_px]
            measured = _measurements(block, values, shares, names, min_tissue_fraction)
            if measured is None:
                continue
            scores = [measured[f"{name} probability"] for name in names[:-1]]
            best = int(np.argmax([*scores, measured["Unclassified fraction"]]))
            yield {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [_ring(store, (x0, y0), values.shape, edge)],
                },
                "properties": {
                    "objectType": "tile",
                    "classification": {"name": names[best], "color": colors[best]},
                    "measurements": measured,
                },
            }


def _on_slide_shares(
    store: ProbabilityStore,
    slide_size: tuple[int, int],
    at: tuple[int, int],
    shape: tuple[int, ...],
) -> np.ndarray | None:
    """The part of each output pixel of the block at output px `at` that lies on the slide
    (0-1: the slide's edge cuts the raster's last column and row), or None when all of the
    block does."""
    (sx, sy), (x0, y0), (th, tw) = store.level0_downsample, at, shape
    ex, ey = slide_size[0] / sx, slide_size[1] / sy  # the slide's edge, in output px
    if x0 + tw <= ex and y0 + th <= ey:
        return None
    cols = np.clip(ex - np.arange(x0, x0 + tw), 0.0, 1.0)
    rows = np.clip(ey - np.arange(y0, y0 + th), 0.0, 1.0)
    shares: np.ndarray = rows[:, None] * cols[None, :]
    return shares


def _measurements(
    block: np.ndarray,
    values: np.ndarray,
    shares: np.ndarray | None,
    names: list[str],
    min_tissue_fraction: float,
) -> dict[str, float] | None:
    """A block's measurements (class probabilities, then "Unclassified fraction" and
    "Tissue fraction"), or None with less than `min_tissue_fraction` tissue. Fractions are
    of areas: on the slide only where `shares` says (an edge block), else of whole pixels."""
    tissue = values != NO_CLASS
    unclassified = values == UNCLASSIFIED_VALUE
    # each pixel by its part on the slide; whole pixels (counts, exact) inside the slide
    weights = np.ones(values.shape) if shares is None else shares
    n, area, gated = (float(weights[m].sum()) for m in (tissue, slice(None), unclassified))
    if not tissue.any() or n < min_tissue_fraction * area:
        return None
    means = block[:, tissue].mean(axis=1)
    measured = {f"{name} probability": float(m) for name, m in zip(names, means, strict=False)}
    measured["Unclassified fraction"] = gated / n
    measured["Tissue fraction"] = n / area
    return measured


def _ring(
    store: ProbabilityStore,
    at: tuple[int, int],
    shape: tuple[int, ...],
    cut_at: tuple[int, int] | None,
) -> list[list[float]]:
    """The level-0 square of the block of `shape` at output px `at`; an edge block's cut at
    the right and bottom edges of the slide of level-0 size `cut_at` (the raster starts at
    the slide's origin: nothing to cut there)."""
    (sx, sy), (ox, oy) = store.level0_downsample, store.offset_level0
    (x0, y0), (th, tw) = at, shape
    x_a, y_a = x0 * sx + ox, y0 * sy + oy
    x_b, y_b = (x0 + tw) * sx + ox, (y0 + th) * sy + oy
    if cut_at is not None:
        x_b, y_b = min(x_b, cut_at[0] + ox), min(y_b, cut_at[1] + oy)
    ring = [[x_a, y_a], [x_b, y_a], [x_b, y_b], [x_a, y_b], [x_a, y_a]]
    return [[round(v, 3) for v in p] for p in ring]


def write_output(
    zarr_path: Path, path: Path, grid: TileGrid, run_id: str, slide_size: tuple[int, int]
) -> None:
    """`--tile-objects`' writer in the output registry (`pipeline.output_files`): one object
    per tile core of `grid` (its side in output px: the stride over the output downsample),
    cut to the slide's level-0 `slide_size`; its objects carry no ids (`run_id` unused)."""
    write_tile_geojson(zarr_path, path, grid.stride // grid.downsample, slide_size)


def write_tile_geojson(
    zarr_path: str | Path,
    path: str | Path,
    tile_px: int,
    slide_size: tuple[int, int],
    min_tissue_fraction: float = 0.05,
) -> int:
    """Write the tile FeatureCollection (streamed feature by feature); return the tile count."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        # Constant envelope written by hand so features stream; every feature is json.dump'ed.
        f.write('{"type":"FeatureCollection","features":[')
        for feature in iter_tile_features(zarr_path, tile_px, slide_size, min_tissue_fraction):
            f.write("," if count else "")
            json.dump(feature, f, allow_nan=False, separators=(",", ":"))
            count += 1
        f.write("]}")
    os.replace(tmp, path)
    return count
