"""Optional pyramidal OME-TIFF copy of the probability maps.

Why: every QuPath version (and most slide viewers) opens a tiled pyramidal OME-TIFF directly,
where OME-Zarr needs QuPath 0.6+. Written from the OME-Zarr pyramid tile by tile, so memory
is one tile row whatever the slide size. Channel names and colours, and the physical pixel
size, are in the OME-XML, and its UUID is given (a run's derives from its fingerprint), so the
same run writes the same bytes: tifffile's own is time-based (uuid1), new in every file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from wsi_segment.pipeline.outputs.ome_xml import ome_color
from wsi_segment.pipeline.outputs.ome_zarr import open_probability_store
from wsi_segment.pipeline.outputs.run_identity import output_id
from wsi_segment.wsi.tiling import TileGrid

TILE = 256


def _tiles(arr: zarr.Array[Any], tile: int) -> Iterator[np.ndarray]:
    """Tiles in TIFF order (plane, then rows, then columns), reading one tile row at a time."""
    c, h, w = arr.shape
    for ch in range(c):
        for y0 in range(0, h, tile):
            strip = np.asarray(arr[ch, y0 : y0 + tile, :])
            for x0 in range(0, w, tile):
                block = strip[:, x0 : x0 + tile]
                if block.shape != (tile, tile):  # edge tiles are padded with 0 (no tissue)
                    padded = np.zeros((tile, tile), dtype=np.uint8)
                    padded[: block.shape[0], : block.shape[1]] = block
                    block = padded
                yield block


def write_output(
    zarr_path: Path, path: Path, grid: TileGrid, run_id: str, slide_size: tuple[int, int]
) -> None:
    """`--ome-tiff`'s writer in the output registry (`pipeline.output_files`): the copy of the
    finished store at `path` (a copy of every level needs nothing of the grid or the slide's
    size), its UUID the run's (`run_identity.output_id`)."""
    write_probability_ome_tiff(zarr_path, path, output_id(f"{run_id}/{path.name}"))


def write_probability_ome_tiff(
    zarr_path: str | Path,
    tiff_path: str | Path,
    file_id: uuid.UUID,
    tile: int = TILE,
    compression: str = "zlib",
) -> Path:
    """Copy every level of the probability OME-Zarr into one pyramidal OME-TIFF (sub-IFDs)
    whose OME UUID is `file_id` (by hand: `uuid.uuid4()`).

    `compression` "zlib" (deflate) is lossless and read by Bio-Formats/QuPath everywhere.
    """
    store = open_probability_store(zarr_path)
    levels = store.levels
    mpp_x, mpp_y = store.output_mpp
    tiff_path = Path(tiff_path)
    tmp = tiff_path.with_name(f".{tiff_path.name}.tmp")
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "compression": compression,
        "photometric": "minisblack",
        "dtype": np.uint8,
    }
    metadata = {
        "UUID": f"urn:uuid:{file_id}",
        "axes": "CYX",
        "Name": store.name,
        "PhysicalSizeX": mpp_x,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp_y,
        "PhysicalSizeYUnit": "µm",
        "Channel": {
            "Name": store.class_names,
            "Color": [ome_color(c) for c in store.colors],
        },
    }
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for i, arr in enumerate(levels):
            f = 2**i
            tif.write(
                _tiles(arr, tile),
                shape=arr.shape,
                subifds=len(levels) - 1 if i == 0 else None,
                subfiletype=1 if i else 0,
                metadata=metadata if i == 0 else None,
                resolution=(1e4 / (mpp_x * f), 1e4 / (mpp_y * f)),
                resolutionunit="CENTIMETER",
                **options,
            )
    tmp.replace(tiff_path)
    return tiff_path
