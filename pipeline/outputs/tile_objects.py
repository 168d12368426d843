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
from wsi_segment.pipeline.outputs.ome_zarr import open_probability_store
from wsi_segment.wsi.tiling import TileGrid


def iter_tile_features(
    zarr_path: str | Path, tile_px: int, min_tissue_fraction: float = 0.05
) -> Iterator[dict[str, Any]]:
    """Yield one QuPath tile feature per `tile_px` x `tile_px` block of output pixels that has
    at least `min_tissue_fraction` tissue (pixels the label image gives a class or
    Unclassified).

    Measurements: "<class> probability" = mean class probability (0-1) over the tile's tissue
    pixels, "Unclassified fraction" (tissue the gate left with no class: probability 0 for
    every class there) and "Tissue fraction". Classification: the class with the highest
    mean, Unclassified counting as probability 1 on its own pixels (so a tile mostly ruled
    out is Unclassified). Geometry in level-0 pixels using the store's `level0_downsample`
    and `offset_level0`.
    """
    if tile_px <= 0:
        raise ConfigError(f"tile size must be positive, got {tile_px}")
    store = open_probability_store(zarr_path)
    names = [*store.class_names, UNCLASSIFIED_NAME]
    colors = [list(c) for c in store.colors] + [list(UNCLASSIFIED_COLOR)]
    labels = open_label_levels(zarr_path)[0]
    sx, sy = store.level0_downsample
    ox, oy = store.offset_level0
    arr = store.levels[0]
    _, h, w = arr.shape
    for y0 in range(0, h, tile_px):
        strip = np.asarray(arr[:, y0 : y0 + tile_px, :], dtype=np.float64) / 255.0
        value_strip = np.asarray(labels[y0 : y0 + tile_px, :])
        for x0 in range(0, w, tile_px):
            block = strip[:, :, x0 : x0 + tile_px]
            values = value_strip[:, x0 : x0 + tile_px]
            tissue = values != NO_CLASS
            n = int(tissue.sum())
            if n == 0 or n < min_tissue_fraction * tissue.size:
                continue
            means = block[:, tissue].mean(axis=1)
            unclassified = int((values == UNCLASSIFIED_VALUE).sum()) / n
            best = int(np.argmax([*means, unclassified]))
            th, tw = tissue.shape
            x_a, y_a = x0 * sx + ox, y0 * sy + oy
            x_b, y_b = (x0 + tw) * sx + ox, (y0 + th) * sy + oy
            ring = [[x_a, y_a], [x_b, y_a], [x_b, y_b], [x_a, y_b], [x_a, y_a]]
            measurements = {
                f"{name} probability": float(m) for name, m in zip(names, means, strict=False)
            }
            measurements["Unclassified fraction"] = unclassified
            measurements["Tissue fraction"] = n / tissue.size
            yield {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[round(v, 3) for v in p] for p in ring]],
                },
                "properties": {
                    "objectType": "tile",
                    "classification": {"name": names[best], "color": colors[best]},
                    "measurements": measurements,
                },
            }


def write_output(zarr_path: Path, path: Path, grid: TileGrid, run_id: str) -> None:
    """`--tile-objects`' writer in the output registry (`pipeline.output_files`): one object
    per tile core of `grid` (its side in output px: the stride over the output downsample);
    its objects carry no ids (`run_id` unused)."""
    write_tile_geojson(zarr_path, path, grid.stride // grid.downsample)


def write_tile_geojson(
    zarr_path: str | Path, path: str | Path, tile_px: int, min_tissue_fraction: float = 0.05
) -> int:
    """Write the tile FeatureCollection (streamed feature by feature); return the tile count."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        # Constant envelope written by hand so features stream; every feature is json.dump'ed.
        f.write('{"type":"FeatureCollection","features":[')
        for feature in iter_tile_features(zarr_path, tile_px, min_tissue_fraction):
            f.write("," if count else "")
            json.dump(feature, f, allow_nan=False, separators=(",", ":"))
            count += 1
        f.write("]}")
    os.replace(tmp, path)
    return count
