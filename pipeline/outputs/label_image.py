"""The class map as an NGFF 0.4 label image beside the probabilities (`0/labels/classes`).

The GeoJSON polygons, the summary's class areas and the overlay all come from this one label
raster (labels taken before quantisation): storing it means a viewer, a script and the overlay see the same answer, even where
every stored probability of a labelled pixel rounds to 0.

Values: class k (in `class_names` order) is `k + 1`; 255 is `Unclassified` (tissue of a tile
where the classification gate ruled every class out); 0 is "no class" (outside tissue), the
background every NGFF viewer leaves transparent.
Each inference writer writes the blocks it owns, like the probabilities (same chunks). The
pyramid is nearest, not a mode: level l pixel (y, x) is level-0 pixel (2**l y, 2**l x), so a
coarse level never shows a class that is not at a real pixel, and one rule says where.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from wsi_segment.errors import OutputError
from wsi_segment.models.labels import NODATA, UNCLASSIFIED, UNCLASSIFIED_COLOR, UNCLASSIFIED_NAME
from wsi_segment.pipeline.outputs.chunk_writes import write_chunk_by_chunk
from wsi_segment.pipeline.outputs.ome_zarr import (
    ATTRS_KEY,
    CHUNK_KEYS,
    COMPRESSOR,
    IN_MEMORY_BYTES,
    NGFF_VERSION,
    image_path,
    open_probability_store,
)

NAME = "classes"  # the label image's name under the image's `labels` group
NO_CLASS = 0
NO_CLASS_NAME = "no class"  # its `class` property: colours and properties list every value
UNCLASSIFIED_VALUE = UNCLASSIFIED + 1  # 255: what `label_values` stores for UNCLASSIFIED
VALUES_RULE = (
    f"value = class index + 1 (class_names order); {UNCLASSIFIED_VALUE} = {UNCLASSIFIED_NAME} "
    "(tissue where the classification gate ruled every class out); 0 = no class (outside tissue)"
)
PYRAMID_RULE = "nearest: level l pixel (y, x) is level-0 pixel (2**l * y, 2**l * x)"


def label_image_path(path: str | Path) -> Path:
    """The label image group of a store (root path)."""
    return image_path(path) / "labels" / NAME


def label_level0_path(path: str | Path) -> Path:
    """The level-0 label array: what the inference writers open."""
    return label_image_path(path) / "0"


def label_values(labels: np.ndarray) -> np.ndarray:
    """Class ids (0..K-1, UNCLASSIFIED, NODATA) of a block -> stored values (k + 1, 255, 0)."""
    out = labels.astype(np.uint8) + np.uint8(1)
    out[labels == NODATA] = NO_CLASS
    return out


def class_ids(values: np.ndarray) -> np.ndarray:
    """Stored values (k + 1, 255, 0) -> class ids (0..K-1, UNCLASSIFIED, NODATA): the inverse of
    `label_values`."""
    out = values.astype(np.uint8) - np.uint8(1)
    out[values == NO_CLASS] = NODATA
    return out


def create_label_image(path: str | Path) -> zarr.Array[Any]:
    """Create the empty level-0 label array of a probability store (its shape, chunks, classes,
    colours and pixel size); return it. Writers write whole chunks, as for the probabilities."""
    store = open_probability_store(path, mode="r+")
    _, h, w = store.levels[0].shape
    _, cy, cx = store.levels[0].chunks
    labels = store.group.require_group("labels")
    labels.attrs["labels"] = [NAME]
    group = labels.create_group(NAME, overwrite=True)
    arr = group.create_array(
        "0",
        shape=(h, w),
        chunks=(cy, cx),
        dtype="uint8",
        fill_value=NO_CLASS,
        compressors=COMPRESSOR,
        chunk_key_encoding=CHUNK_KEYS,
    )
    colors: list[dict[str, Any]] = [{"label-value": NO_CLASS, "rgba": [0, 0, 0, 0]}] + [
        {"label-value": k + 1, "rgba": [*(int(v) for v in color), 255]}
        for k, color in enumerate(store.colors)
    ]
    colors.append({"label-value": UNCLASSIFIED_VALUE, "rgba": [*UNCLASSIFIED_COLOR, 255]})
    attrs: dict[str, Any] = {
        "multiscales": [_multiscales(store.name, store.output_mpp, 1)],
        "image-label": {
            "version": NGFF_VERSION,
            "colors": colors,
            "properties": [{"label-value": NO_CLASS, "class": NO_CLASS_NAME}]
            + [{"label-value": k + 1, "class": name} for k, name in enumerate(store.class_names)]
            + [{"label-value": UNCLASSIFIED_VALUE, "class": UNCLASSIFIED_NAME}],
            "source": {"image": "../../"},
        },
        ATTRS_KEY: {
            "class_names": store.class_names,
            "values": VALUES_RULE,
            "no_class_value": NO_CLASS,
            "unclassified_value": UNCLASSIFIED_VALUE,
            "pyramid": PYRAMID_RULE,
        },
    }
    group.attrs.update(attrs)
    return arr


def open_label_levels(path: str | Path) -> list[zarr.Array[Any]]:
    """The label image's levels, finest first (a store without one is an older output)."""
    try:
        group = zarr.open_group(str(label_image_path(path)), mode="r", zarr_format=2)
    except FileNotFoundError as exc:
        raise OutputError(
            f"{path}: no label image {NAME!r}; an older output? Run the slide again with "
            "--overwrite"
        ) from exc
    attrs: Any = group.attrs.asdict()  # JSON, written by create_label_image
    levels = []
    for dataset in attrs["multiscales"][0]["datasets"]:
        level = group[str(dataset["path"])]
        if not isinstance(level, zarr.Array):
            raise OutputError(f"{path}: label level {dataset!r} is not an array; write it again")
        levels.append(level)
    return levels


def finalize_label_pyramid(path: str | Path, n_levels: int) -> None:
    """Levels 1..n_levels-1 of the label image, each the nearest (every 2nd pixel) of the
    one before; the same count as the probability pyramid. Block by block past
    IN_MEMORY_BYTES, so memory stays a few chunks; safe to re-run."""
    group = zarr.open_group(str(label_image_path(path)), mode="r+", zarr_format=2)
    src = group["0"]
    assert isinstance(src, zarr.Array)
    cy, cx = src.chunks
    whole = np.asarray(src[:]) if src.nbytes <= IN_MEMORY_BYTES else None
    for level in range(1, n_levels):
        h, w = src.shape
        dst = group.create_array(
            str(level),
            shape=(math.ceil(h / 2), math.ceil(w / 2)),
            chunks=(cy, cx),
            dtype="uint8",
            fill_value=NO_CLASS,
            compressors=COMPRESSOR,
            chunk_key_encoding=CHUNK_KEYS,
            overwrite=True,
        )
        if whole is not None:
            whole = whole[::2, ::2]
            write_chunk_by_chunk(dst, (0, 0), whole)
        else:
            for by in range(math.ceil(dst.shape[0] / cy)):
                for bx in range(math.ceil(dst.shape[1] / cx)):
                    block = src[2 * cy * by : 2 * cy * (by + 1), 2 * cx * bx : 2 * cx * (bx + 1)]
                    small = np.asarray(block)[::2, ::2]
                    dst[cy * by : cy * by + small.shape[0], cx * bx : cx * bx + small.shape[1]] = (
                        small
                    )
        src = dst
    for stale in range(max(1, n_levels), 64):
        if str(stale) not in group:
            break
        del group[str(stale)]
    store = open_probability_store(path)
    group.attrs["multiscales"] = [_multiscales(store.name, store.output_mpp, n_levels)]


def _multiscales(name: str, mpp: tuple[float, float], n_levels: int) -> dict[str, Any]:
    """NGFF 0.4 multiscales of the (y, x) label image: level l has scale 2**l x the output
    mpp and no translation (its pixel is the level-0 pixel at its top-left, not a mean)."""
    return {
        "version": NGFF_VERSION,
        "name": f"{name} classes",
        "axes": [
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": [
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [mpp[1] * 2**level, mpp[0] * 2**level]}
                ],
            }
            for level in range(n_levels)
        ],
        "type": "nearest",
        "metadata": {"method": PYRAMID_RULE},
    }
