"""Class-probability maps as OME-NGFF 0.4 multiscale images (Zarr v2 format).

Why 0.4 / Zarr v2: QuPath (0.6+, through Bio-Formats) and most viewers read it; QuPath does
not read 0.5. Values are uint8 (0-255 = probability 0-1): no float16, which neither
Bio-Formats nor Neuroglancer reads.

Layout: the bioformats2raw form of NGFF 0.4. The root holds only `bioformats2raw.layout: 3`;
the image (multiscales, omero, levels `0`, `1`, ...) is series `0/`; `OME/METADATA.ome.xml`
names and colours the channels and gives the pixel size, which is all Bio-Formats (QuPath
0.6) reads. NGFF readers (ome-zarr-py, napari) open the image group `0/`.

Chunks are `(1, cy, cx)`: one class per chunk, so a viewer showing one channel decodes only
that channel, and a writer that owns a yx block owns every chunk of that block (all classes),
which is what parallel writers need (two writers touching one chunk lose writes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
from zarr.core.chunk_key_encodings import ChunkKeyEncodingParams

from wsi_segment.errors import ConfigError, OutputError
from wsi_segment.pipeline.machine import usable_cores
from wsi_segment.pipeline.outputs.chunk_writes import write_chunk_by_chunk
from wsi_segment.pipeline.outputs.ome_xml import probability_ome_xml

NGFF_VERSION = "0.4"
ATTRS_KEY = "wsi_segment"
IMAGE = "0"  # the image group: series 0 of the bioformats2raw layout
LAYOUT_KEY = "bioformats2raw.layout"
CHUNK_KEYS: ChunkKeyEncodingParams = {"name": "v2", "separator": "/"}  # NGFF 0.4 requires "/"
# Blosc is what bioformats2raw writes and every OME-Zarr 0.4 reader decodes. zstd inside it
# stores smooth probability maps in ~2/3 of lz4's bytes; level 1, not 5: compression is the
# writer's dearest step, level 5 costs ~5x the CPU of level 1 for ~10 % fewer bytes
# (benchmarks/RESULTS.md, "Writer"), and readers decode every level alike.
COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)

Color = tuple[int, int, int]
IN_MEMORY_BYTES = 64 << 20  # finalize_pyramid: level 0 up to this size is coarsened in memory


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """Accept one number or an (x, y) pair; reject non-positive values."""
    pair = tuple(value) if isinstance(value, Sequence | np.ndarray) else (value, value)
    if len(pair) != 2 or not all(float(v) > 0 for v in pair):
        raise ConfigError(f"{name} must be a positive number or an (x, y) pair, got {value!r}")
    return float(pair[0]), float(pair[1])


def image_path(path: str | Path) -> Path:
    """The NGFF image group of a store: what ome-zarr-py and napari open."""
    return Path(path) / IMAGE


def level0_path(path: str | Path) -> Path:
    """The level-0 probability array of a store: what the inference writers open."""
    return image_path(path) / "0"


def _hex(color: Color) -> str:
    """OMERO colours are RRGGBB hex strings."""
    return "".join(f"{int(c):02X}" for c in color)


def create_probability_store(
    path: str | Path,
    class_names: Sequence[str],
    colors: Sequence[Color],
    shape_yx: tuple[int, int],
    chunk_yx: tuple[int, int],
    output_mpp: float | tuple[float, float],
    level0_downsample: float | tuple[float, float],
    offset_level0: tuple[float, float] = (0, 0),
    name: str | None = None,
) -> zarr.Array[Any]:
    """Create the store and its level-0 array `(C, H, W)` uint8, all zeros (nothing written).

    `output_mpp` and `level0_downsample` are a number or an `(x, y)` pair; a level-0 pixel
    position is `output_px * level0_downsample + offset_level0`. Writers must write whole
    `chunk_yx` blocks (all channels) per task. The metadata is valid from the start (one level);
    `finalize_pyramid` adds the coarser levels. `name` (e.g. the slide stem) is the image name
    viewers show; default: the folder name. `path` is the store's root (bioformats2raw
    layout); the array returned is `level0_path(path)`.
    """
    _check_one_colour_per_class(class_names, colors)
    h, w, cy, cx = _checked_sizes(shape_yx, chunk_yx)
    mpp = _pair(output_mpp, "output_mpp")
    ds = _pair(level0_downsample, "level0_downsample")
    image_name = name or Path(path).name
    root = _create_layout(path, image_name, class_names, colors, (h, w), mpp)
    group = root.create_group(IMAGE)
    arr = group.create_array(
        "0",
        shape=(len(class_names), h, w),
        chunks=(1, cy, cx),
        dtype="uint8",
        fill_value=0,
        compressors=COMPRESSOR,
        chunk_key_encoding=CHUNK_KEYS,
    )
    group.attrs.update(
        {
            "multiscales": [_multiscales(image_name, mpp, 1)],
            "omero": _omero(class_names, colors),
            ATTRS_KEY: _our_attrs(class_names, colors, mpp, ds, offset_level0),
        }
    )
    return arr


def _check_one_colour_per_class(class_names: Sequence[str], colors: Sequence[Color]) -> None:
    """Every channel is a class with its colour (viewers show both)."""
    if len(class_names) != len(colors) or not class_names:
        raise ConfigError(
            f"need one colour per class, got {len(class_names)} names, {len(colors)} colours"
        )


def _checked_sizes(
    shape_yx: tuple[int, int], chunk_yx: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The store's (height, width, chunk height, chunk width), once all are positive."""
    h, w = (int(v) for v in shape_yx)
    cy, cx = (int(v) for v in chunk_yx)
    if h <= 0 or w <= 0 or cy <= 0 or cx <= 0:
        raise ConfigError(f"shape {shape_yx} and chunks {chunk_yx} must be positive")
    return h, w, cy, cx


def _create_layout(
    path: str | Path,
    image_name: str,
    class_names: Sequence[str],
    colors: Sequence[Color],
    shape_yx: tuple[int, int],
    mpp: tuple[float, float],
) -> zarr.Group:
    """The bioformats2raw root and its OME-XML, which is all Bio-Formats (QuPath) reads."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs[LAYOUT_KEY] = 3
    root.create_group("OME", attributes={"series": [IMAGE]})
    xml = probability_ome_xml(image_name, class_names, colors, (len(class_names), *shape_yx), mpp)
    (Path(path) / "OME" / "METADATA.ome.xml").write_text(xml, encoding="utf-8")
    return root


def _our_attrs(
    class_names: Sequence[str],
    colors: Sequence[Color],
    mpp: tuple[float, float],
    ds: tuple[float, float],
    offset_level0: tuple[float, float],
) -> dict[str, Any]:
    """What our own readers take from the store: classes, colours, value scale and the way
    back to level-0 pixels."""
    return {
        "class_names": list(class_names),
        "colors": [[int(c) for c in col] for col in colors],
        "value_scale": "probability = value / 255",
        "output_mpp": {"x": mpp[0], "y": mpp[1]},
        "level0_downsample": {"x": ds[0], "y": ds[1]},
        "offset_level0": {"x": float(offset_level0[0]), "y": float(offset_level0[1])},
        "to_level0": "level0 = pixel * level0_downsample * 2**level + offset_level0",
    }


@dataclass(frozen=True)
class ProbabilityStore:
    """A probability store opened for reading: what `create_probability_store` recorded,
    typed once here so readers (overlay, OME-TIFF, tile objects) never index raw JSON."""

    group: zarr.Group
    name: str
    levels: list[zarr.Array[Any]]  # finest first, as the multiscales metadata lists them
    class_names: list[str]
    colors: list[Color]
    output_mpp: tuple[float, float]
    level0_downsample: tuple[float, float]
    offset_level0: tuple[float, float]


def open_probability_store(path: str | Path, mode: Literal["r", "r+"] = "r") -> ProbabilityStore:
    """Open a store written by `create_probability_store` (and `finalize_pyramid`): its root."""
    root = zarr.open_group(str(path), mode="r", zarr_format=2)
    if root.attrs.get(LAYOUT_KEY) != 3 or IMAGE not in root:
        raise OutputError(
            f"{path}: not a wsi-segment probability store (no bioformats2raw layout with an "
            f"image {IMAGE!r}); an older output? Run the slide again with --overwrite"
        )
    group = zarr.open_group(str(image_path(path)), mode=mode, zarr_format=2)
    attrs: Any = group.attrs.asdict()  # JSON: its shape is checked field by field below
    multiscales, meta = attrs["multiscales"][0], attrs[ATTRS_KEY]
    levels = []
    for dataset in multiscales["datasets"]:
        level = group[str(dataset["path"])]
        if not isinstance(level, zarr.Array):
            raise OutputError(f"{path}: level {dataset['path']!r} is not an array; write it again")
        levels.append(level)

    def xy(key: str) -> tuple[float, float]:
        return float(meta[key]["x"]), float(meta[key]["y"])

    return ProbabilityStore(
        group=group,
        name=str(multiscales.get("name") or Path(path).name),
        levels=levels,
        class_names=[str(c) for c in meta["class_names"]],
        colors=[(int(c[0]), int(c[1]), int(c[2])) for c in meta["colors"]],
        output_mpp=xy("output_mpp"),
        level0_downsample=xy("level0_downsample"),
        offset_level0=xy("offset_level0"),
    )


def _multiscales(name: str, mpp: tuple[float, float], n_levels: int) -> dict[str, Any]:
    """NGFF 0.4 multiscales entry; level l is a 2^l mean downsample of level 0.

    The translation puts each coarse pixel's centre where the centre of the level-0 pixels it
    averages is, so levels overlay exactly in physical space (level 0: no shift).
    """
    datasets = []
    for level in range(n_levels):
        f = 2**level
        shift = (f - 1) / 2
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, mpp[1] * f, mpp[0] * f]},
                    {"type": "translation", "translation": [0.0, mpp[1] * shift, mpp[0] * shift]},
                ],
            }
        )
    return {
        "version": NGFF_VERSION,
        "name": name,
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": datasets,
        "type": "mean",
        "metadata": {"method": "2x2 mean, rounded half up, edges averaged over existing pixels"},
    }


def _omero(class_names: Sequence[str], colors: Sequence[Color]) -> dict[str, Any]:
    """OMERO rendering hints: channel labels = class names, colours as hex, full 0-255 window."""
    channels = [
        {
            "label": str(name),
            "color": _hex(color),
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {"start": 0, "end": 255, "min": 0, "max": 255},
        }
        for name, color in zip(class_names, colors, strict=True)
    ]
    return {"channels": channels, "rdefs": {"model": "color"}}


def downsample_mean2(block: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes of a uint8 block, rounded half up.

    An odd edge is padded by repeating it, which makes the edge value the mean of the pixels
    that exist (a lone column averages its two rows, a lone corner is itself).
    """
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    if h % 2 or w % 2:
        block = np.pad(block, pad, mode="edge")
    b = block.astype(np.uint16)
    s = b[..., 0::2, 0::2] + b[..., 1::2, 0::2] + b[..., 0::2, 1::2] + b[..., 1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def finalize_pyramid(path: str | Path, min_size: int = 256) -> int:
    """Add levels 1..n (2x mean each) until the coarsest fits in `min_size`; return level count.

    Streams block by block: each task reads a `(1, 2cy, 2cx)` block of the finer level and
    writes exactly one `(1, cy, cx)` chunk of the coarser one, so memory is a few chunks and
    no two tasks share a chunk. A few threads (Blosc releases the GIL); no Dask: importing
    dask.array (and distributed, which dask probes for a client) cost more than the pyramid
    of a typical slide. Safe to re-run: levels above 0 are rebuilt.
    """
    store = open_probability_store(path, mode="r+")
    group, name, mpp = store.group, store.name, store.output_mpp
    src = store.levels[0]
    _, cy, cx = src.chunks
    level = 0
    workers = min(4, usable_cores())
    # Small maps (most slides: 4 classes x 2k x 2k = 16 MB) are coarsened in memory and each
    # level written in one call: zarr's per-call overhead (~5 ms) dominated block by block.
    whole = np.asarray(src[:]) if src.nbytes <= IN_MEMORY_BYTES else None
    with ThreadPoolExecutor(workers) as pool:
        while max(src.shape[1:]) > min_size:
            c, h, w = src.shape
            dst = group.create_array(
                str(level + 1),
                shape=(c, math.ceil(h / 2), math.ceil(w / 2)),
                chunks=(1, cy, cx),
                dtype="uint8",
                fill_value=0,
                compressors=COMPRESSOR,
                chunk_key_encoding=CHUNK_KEYS,
                overwrite=True,
            )
            if whole is not None:
                whole = downsample_mean2(whole)
                write_chunk_by_chunk(dst, (0, 0, 0), whole)
            else:
                blocks = [
                    (k, by, bx)
                    for k in range(c)
                    for by in range(math.ceil(dst.shape[1] / cy))
                    for bx in range(math.ceil(dst.shape[2] / cx))
                ]
                # list(): raise the first error of any block here
                list(pool.map(lambda b, s=src, d=dst: _coarsen_chunk(s, d, *b), blocks))
            src = dst
            level += 1
    for stale in range(level + 1, 64):
        if str(stale) not in group:
            break
        del group[str(stale)]
    group.attrs["multiscales"] = [_multiscales(name, mpp, level + 1)]
    return level + 1


def _coarsen_chunk(src: zarr.Array[Any], dst: zarr.Array[Any], k: int, by: int, bx: int) -> None:
    """Write dst chunk (k, by, bx) as the 2x2 mean of the src block it covers."""
    _, cy, cx = dst.chunks
    block = src[k : k + 1, 2 * cy * by : 2 * cy * (by + 1), 2 * cx * bx : 2 * cx * (bx + 1)]
    small = downsample_mean2(np.asarray(block))
    dst[k : k + 1, cy * by : cy * by + small.shape[1], cx * bx : cx * bx + small.shape[2]] = small
