"""Synthetic whole-slide images with exact ground truth, for tests, demos and benchmarks.

`write_synthetic_slide` writes an Aperio-like pyramidal tiled JPEG TIFF (openslide and
tiffslide read it as vendor aperio, with its mpp) and, next to it, the label map it was
painted from, so a segmentation can be scored against the truth.

Why it is built this way:
- The label map lives on a coarse grid (one cell per `label_downsample` level-0 px, a
  divisor of the tile size) and is upsampled by nearest neighbour per tile, so a big slide
  never needs its full-resolution label map in memory.
- Every random quantity is a hash of position (`synthetic.textures`), so tiles render seamlessly
  one at a time, and one seed gives the same bytes.
- Tiles stream to tifffile from generators; only tiles holding tissue are rendered
  (~0.3 s each), the rest are one shared white tile. Lower levels are 4x box averages of
  the level above, kept in a temporary disk-backed array, so memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_segment.synthetic.textures import (
    BACKGROUND,
    CLASS_COLORS,
    CLASS_NAMES,
    Stain,
    fbm,
    render_region,
    render_tissue,
)
from wsi_segment.wsi.box_mean import box_mean
from wsi_segment.wsi.tissue import drop_small

__all__ = [
    "BACKGROUND",
    "CLASS_COLORS",
    "CLASS_NAMES",
    "read_label_map",
    "render_tissue",
    "write_aperio_pyramid",
    "write_synthetic_slide",
]

REGION_UM = 250.0  # feature size of the class partition (regions of ~100-400 um)
MIN_PIECE_UM2 = 40_000.0  # tissue pieces smaller than this are dropped (detect_tissue: 20k)
MIN_HOLE_UM2 = 10_000.0  # holes smaller than this are filled (detect_tissue: 5k)
_BAND = 256  # label rows computed at once (bounds float64 temporaries)
TileFn = Callable[[int, int], np.ndarray]  # (row, col) -> one (tile, tile, 3) tile


def _cells(n_rows: int, n_cols: int, r0: int) -> tuple[np.ndarray, np.ndarray]:
    y = (np.arange(r0, r0 + n_rows, dtype=np.float64) + 0.5)[:, None]
    x = (np.arange(n_cols, dtype=np.float64) + 0.5)[None, :]
    return y, x


def _tissue_field(y: np.ndarray, x: np.ndarray, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Blobby fbm, pulled down towards the slide edges so tissue sits inside the slide."""
    rows, cols = shape
    scale = max(rows, cols) / 3.0
    ry, rx = (y / rows - 0.5) * 2, (x / cols - 0.5) * 2
    return fbm(y, x, scale, seed * 31 + 11, octaves=3) - 0.35 * (ry * ry + rx * rx)


def make_label_map(
    width: int, height: int, *, mpp: float, seed: int, tissue_fraction: float, downsample: int
) -> np.ndarray:
    """Coarse uint8 label map (ceil(H/ds), ceil(W/ds)): classes 0..3, 255 = background.

    Tissue = the fbm field above its (1 - fraction) quantile (estimated on a <= 256^2
    subsample, so the cost of the threshold does not grow with the slide); classes = argmax
    of four fbm fields at REGION_UM, so regions are tens to hundreds of micrometres.
    """
    rows, cols = math.ceil(height / downsample), math.ceil(width / downsample)
    labels = np.full((rows, cols), BACKGROUND, np.uint8)
    if tissue_fraction <= 0:
        return labels
    step = max(1, math.ceil(max(rows, cols) / 256))
    sy = (np.arange(0, rows, step, dtype=np.float64) + 0.5)[:, None]
    sx = (np.arange(0, cols, step, dtype=np.float64) + 0.5)[None, :]
    sample = _tissue_field(sy, sx, (rows, cols), seed)
    thr = -np.inf if tissue_fraction >= 1 else float(np.quantile(sample, 1 - tissue_fraction))
    cell_um = downsample * mpp
    region = REGION_UM / cell_um
    tissue = np.zeros((rows, cols), bool)
    for r0 in range(0, rows, _BAND):
        y, x = _cells(min(_BAND, rows - r0), cols, r0)
        tissue[r0 : r0 + y.shape[0]] = _tissue_field(y, x, (rows, cols), seed) > thr
        fields = np.stack([fbm(y, x, region, seed * 97 + 1 + 13 * k) for k in range(4)])
        labels[r0 : r0 + y.shape[0]] = np.argmax(fields, axis=0)
    if 0 < tissue_fraction < 1:  # (tiny slides: never drop more than 2 % of the slide)
        small = 0.02 * rows * cols
        tissue = drop_small(tissue, min(MIN_PIECE_UM2 / cell_um**2, small))
        tissue = ~drop_small(~tissue, min(MIN_HOLE_UM2 / cell_um**2, small), keep_border=True)
    labels[~tissue] = BACKGROUND
    return labels


def _level_downsamples(width: int, height: int, tile: int) -> list[int]:
    """1, 4, 16, ... while the level is at least one tile on its longer side (like Aperio)."""
    levels = [1]
    while max(width, height) / (levels[-1] * 4) >= tile:
        levels.append(levels[-1] * 4)
    return levels


def _thumbnail(level1: np.ndarray, w1: int, h1: int, max_side: int = 1024) -> np.ndarray:
    """Aperio's second page: a small stripped overview, box-averaged band by band."""
    k = max(1, math.ceil(max(w1, h1) / max_side))
    band = k * 64
    parts = [
        box_mean(np.asarray(level1[r : min(r + band, h1), :w1]), k) for r in range(0, h1, band)
    ]
    return np.concatenate(parts, axis=0)


def _description(width: int, height: int, w: int, h: int, tile: int, mpp: float, q: int) -> str:
    head = (
        f"Aperio Image Library v12.0.0 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"
    )
    if (w, h) != (width, height):
        head += f" -> {w}x{h}"
    return f"{head} JPEG/RGB Q={q}|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"


@dataclass(frozen=True)
class _Level0Tiles:
    """Level-0 storage tiles rendered from the label map's cells (`padded`, background past
    the slide to whole tiles), one tile at a time, so a large slide never sits in memory."""

    padded: np.ndarray
    width: int
    height: int
    tile: int
    label_downsample: int
    seed: int
    stain: Stain
    mpp: float
    white: np.ndarray  # the tile of a background-only cell block

    def __call__(self, i: int, j: int) -> np.ndarray:
        tile, ds = self.tile, self.label_downsample
        per = tile // ds  # label cells per tile side
        cells = self.padded[i * per : (i + 1) * per, j * per : (j + 1) * per]
        if (cells == BACKGROUND).all():
            return self.white
        lab = np.repeat(np.repeat(cells, ds, axis=0), ds, axis=1)
        lab[max(0, self.height - i * tile) :, :] = BACKGROUND  # past the slide edge
        lab[:, max(0, self.width - j * tile) :] = BACKGROUND
        return render_region(lab, (j * tile, i * tile), self.seed, self.stain, px_um=self.mpp)


def _tiles(
    rows: int, cols: int, tile: int, get: TileFn, nxt: np.ndarray | None
) -> Iterator[np.ndarray]:
    """A level's tiles in row order; each is also averaged 4 x 4 into `nxt`, the next
    level's pixels (None: the last level)."""
    q = tile // 4
    for i in range(rows):
        for j in range(cols):
            t = get(i, j)
            if nxt is not None:
                nxt[i * q : (i + 1) * q, j * q : (j + 1) * q] = box_mean(t, 4)
            yield t


def _from_array(src: np.ndarray, tile: int, white: np.ndarray) -> TileFn:
    """The tiles of a level held in `src`, padded with white past its edge."""

    def get(i: int, j: int) -> np.ndarray:
        t = src[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile]
        if t.shape[:2] == (tile, tile):
            return np.ascontiguousarray(t)
        out = white.copy()
        out[: t.shape[0], : t.shape[1]] = t
        return out

    return get


@dataclass(frozen=True)
class _ArrayTiles:
    """Level-0 storage tiles cut from an image held in memory (a real scan's pixels)."""

    src: np.ndarray
    width: int
    height: int
    tile: int
    mpp: float
    white: np.ndarray

    def __call__(self, i: int, j: int) -> np.ndarray:
        return _from_array(self.src, self.tile, self.white)(i, j)


def write_aperio_pyramid(
    path: str | Path, rgb: np.ndarray, *, mpp: float, tile: int = 256, quality: int = 90
) -> Path:
    """Write `rgb` (H, W, 3 uint8: real pixels) as an Aperio-like pyramid declared at `mpp`
    (levels 1, 4, 16, ... as 4 x 4 box averages, as a scanner's): a 40x-like scan of real
    tissue for the level that serves (`wsi.region_reader.choose_level`)."""
    import tifffile

    path = Path(path)
    height, width = rgb.shape[:2]
    white = np.full((tile, tile, 3), 255, np.uint8)
    level0 = _ArrayTiles(np.ascontiguousarray(rgb), width, height, tile, mpp, white)
    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}, "photometric": "rgb"}
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".pyramid-") as scratch,
        tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif,
    ):
        _write_pyramid(tif, Path(scratch), level0, jpeg, quality)
    return path


def _write_pyramid(
    tif: Any,
    scratch: Path,
    level0: _Level0Tiles | _ArrayTiles,
    jpeg: dict[str, Any],
    quality: int,
) -> None:
    """Every level into `tif` (each from the one before, through a memory map in
    `scratch`), with Aperio's thumbnail as the second page."""
    width, height, tile, mpp = level0.width, level0.height, level0.tile, level0.mpp
    levels = _level_downsamples(width, height, tile)
    get: TileFn = level0
    rows, cols = math.ceil(height / tile), math.ceil(width / tile)
    for n, ds in enumerate(levels):
        w, h = math.ceil(width / ds), math.ceil(height / ds)
        nxt = None
        if n + 1 < len(levels) or n == 0:  # next level (and thumbnail) source
            shape = (rows * tile // 4, cols * tile // 4, 3)
            nxt = np.lib.format.open_memmap(scratch / f"level{n + 1}.npy", "w+", np.uint8, shape)
        tif.write(
            _tiles(rows, cols, tile, get, nxt),
            shape=(h, w, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            description=_description(width, height, w, h, tile, mpp, quality),
            metadata=None,
            **jpeg,
        )
        if nxt is None:
            continue
        nxt.flush()
        if n == 0:  # readers (tifffile, tiffslide) expect page 2 to be the thumbnail
            thumb = _thumbnail(nxt, math.ceil(width / 4), math.ceil(height / 4))
            th, tw = thumb.shape[:2]
            desc = _description(width, height, tw, th, tile, mpp, quality)
            tif.write(thumb, description=desc, metadata=None, **jpeg)
        get = _from_array(nxt, tile, level0.white)
        rows, cols = math.ceil(nxt.shape[0] / tile), math.ceil(nxt.shape[1] / tile)


def write_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    mpp: float = 0.5,
    seed: int = 0,
    tissue_fraction: float = 0.5,
    tile: int = 256,
    quality: int = 90,
    label_downsample: int = 16,
) -> Path:
    """Write the slide at `path` and its label map; return the label map path.

    The label map is `<stem>.labels.png` (uint8, one pixel per `label_downsample` level-0
    px, 0..3 = CLASS_NAMES, 255 = background); `<stem>.labels.json` records its downsample,
    classes, colours, mpp and the arguments.
    """
    import tifffile

    path = Path(path)
    if width < 1 or height < 1 or tile % 16 or tile % label_downsample:
        raise ValueError("need width, height >= 1, tile a multiple of 16 and of label_downsample")
    ds_lab = label_downsample
    labels = make_label_map(
        width, height, mpp=mpp, seed=seed, tissue_fraction=tissue_fraction, downsample=ds_lab
    )
    rng = np.random.default_rng(seed)
    stain = Stain(h=float(rng.uniform(0.9, 1.1)), e=float(rng.uniform(0.9, 1.1)))
    per = tile // ds_lab  # label cells per tile side
    padded = np.full(
        (math.ceil(height / tile) * per, math.ceil(width / tile) * per), BACKGROUND, np.uint8
    )
    padded[: labels.shape[0], : labels.shape[1]] = labels
    white = np.full((tile, tile, 3), 255, np.uint8)
    level0 = _Level0Tiles(padded, width, height, tile, ds_lab, seed, stain, mpp, white)
    jpeg = {"compression": "jpeg", "compressionargs": {"level": quality}, "photometric": "rgb"}
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".synthetic-") as scratch,
        tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif,
    ):
        _write_pyramid(tif, Path(scratch), level0, jpeg, quality)
    meta = {
        "downsample": ds_lab,
        "width": width,
        "height": height,
        "mpp": mpp,
        "classes": list(CLASS_NAMES),
        "colors": [list(c) for c in CLASS_COLORS],
        "background": BACKGROUND,
        "seed": seed,
        "tissue_fraction": tissue_fraction,
        "slide": path.name,
    }
    return _write_label_files(path, labels, meta)


def _write_label_files(path: Path, labels: np.ndarray, meta: dict[str, Any]) -> Path:
    """`<stem>.labels.png` and its JSON sidecar `meta` beside the slide at `path`."""
    from PIL import Image

    label_path = path.with_name(path.stem + ".labels.png")
    Image.fromarray(labels, mode="L").save(label_path)
    path.with_name(path.stem + ".labels.json").write_text(json.dumps(meta, indent=2) + "\n")
    return label_path


def read_label_map(label_path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(coarse label map, its JSON sidecar); pixel (r, c) covers level-0 px
    [c*ds, (c+1)*ds) x [r*ds, (r+1)*ds) with ds = meta["downsample"]."""
    from PIL import Image

    label_path = Path(label_path)
    meta = json.loads(label_path.with_name(label_path.name[: -len(".png")] + ".json").read_text())
    return np.asarray(Image.open(label_path)), meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a synthetic Aperio-like slide + label map.")
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=4096, help="width = height in level-0 px")
    p.add_argument("--tissue", type=float, default=0.5, help="tissue fraction of the slide")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpp", type=float, default=0.5)
    args = p.parse_args(argv)
    label_path = write_synthetic_slide(
        args.out, args.size, args.size, mpp=args.mpp, seed=args.seed, tissue_fraction=args.tissue
    )
    print(f"{args.out}  (labels: {label_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
