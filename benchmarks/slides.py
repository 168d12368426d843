"""Synthetic slides for the benchmarks.

`make_slide` uses `wsi_segment.synthetic.slides.write_synthetic_slide`; with `fast=True` it
writes a stand-in instead: an Aperio-like pyramidal tiled JPEG TIFF whose tissue
is an ellipse covering `tissue_fraction` of the slide, filled with a small bank of
procedural H&E tiles (`synthetic.textures.render_region`) reused across the slide. Rendering
every tile procedurally costs ~0.3 s per 256 px tile on this machine, too slow for 100k px
slides; a bank keeps the decode and compute cost of real tiles (JPEG of textured
content) while writing a 100k x 100k slide in minutes. Memory stays flat: tiles are
generated and written one by one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TILE = 256
BANK_VARIANTS = 3  # textured tiles per class


def make_slide(
    path: Path,
    size: int,
    tissue_fraction: float,
    *,
    mpp: float = 0.5,
    seed: int = 0,
    fast: bool = False,
) -> tuple[Path, str]:
    """Write (or reuse) a square synthetic slide; return (path, which writer made it)."""
    path = Path(path)
    if path.exists():
        return path, _writer_tag(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    if fast:
        writer = "benchmarks.slides (tile bank)"
        write_bank_slide(tmp, size, size, tissue_fraction, mpp=mpp, seed=seed)
    else:
        from wsi_segment.synthetic.slides import write_synthetic_slide

        writer = "wsi_segment.synthetic.slides.write_synthetic_slide"
        write_synthetic_slide(tmp, size, size, mpp=mpp, seed=seed, tissue_fraction=tissue_fraction)
    tmp.rename(path)
    path.with_name(path.name + ".writer").write_text(writer)
    return path, writer


def _writer_tag(path: Path) -> str:
    tag = path.with_name(path.name + ".writer")
    return tag.read_text().strip() if tag.exists() else "unknown"


def _bank(seed: int, mpp: float) -> list[np.ndarray]:
    from wsi_segment.synthetic.textures import Stain, render_region

    rng = np.random.default_rng(seed)
    tiles = []
    for cls in range(4):
        for v in range(BANK_VARIANTS):
            labels = np.full((TILE, TILE), cls, np.uint8)
            origin = (int(rng.integers(0, 1 << 20)), int(rng.integers(0, 1 << 20)))
            stain = Stain(h=float(rng.uniform(0.9, 1.1)), e=float(rng.uniform(0.9, 1.1)))
            tiles.append(render_region(labels, origin, seed + v, stain, px_um=mpp))
    return tiles


def _is_tissue(cx: np.ndarray, cy: np.ndarray, width: int, height: int, frac: float) -> np.ndarray:
    """Inside an ellipse centred on the slide whose area is `frac` of the slide."""
    if frac <= 0:
        return np.zeros(np.broadcast_shapes(cx.shape, cy.shape), bool)
    k = math.sqrt(min(frac, 0.78) * 4 / math.pi)
    a, b = k * width / 2, k * height / 2
    return ((cx - width / 2) / a) ** 2 + ((cy - height / 2) / b) ** 2 <= 1.0


def write_bank_slide(
    path: Path, width: int, height: int, tissue_fraction: float, *, mpp: float, seed: int
) -> None:
    """Aperio-like pyramid (downsamples 1, 4, 16, ...) of bank tiles inside an ellipse."""
    import tifffile
    from PIL import Image

    bank = _bank(seed, mpp)
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    rows0, cols0 = math.ceil(height / TILE), math.ceil(width / TILE)
    ti, tj = np.mgrid[0:rows0, 0:cols0]
    tissue = _is_tissue((tj + 0.5) * TILE, (ti + 0.5) * TILE, width, height, tissue_fraction)
    rng = np.random.default_rng(seed + 1)
    choice = rng.integers(0, len(bank), size=(rows0, cols0))

    def tile0(i: int, j: int) -> np.ndarray:
        return bank[choice[i, j]] if tissue[i, j] else white

    levels = [1]
    while max(width, height) / (levels[-1] * 4) >= 1024:
        levels.append(levels[-1] * 4)

    def tiles_for(ds: int) -> Iterator[np.ndarray]:
        small = {}
        sub = TILE // ds if ds <= TILE else 1
        per = ds  # level-0 tiles per level tile side
        rows, cols = math.ceil(height / ds / TILE), math.ceil(width / ds / TILE)
        for i in range(rows):
            for j in range(cols):
                if ds == 1:
                    yield tile0(i, j)
                    continue
                out = np.full((TILE, TILE, 3), 255, np.uint8)
                for a in range(per):
                    ii = i * per + a
                    if ii >= rows0:
                        break
                    blk = tissue[ii, j * per : (j + 1) * per]
                    if not blk.any():
                        continue
                    for b in np.nonzero(blk)[0]:
                        key = int(choice[ii, j * per + b])
                        if key not in small:
                            small[key] = np.asarray(
                                Image.fromarray(bank[key]).resize((sub, sub), Image.Resampling.BOX)
                            )
                        out[a * sub : (a + 1) * sub, b * sub : (b + 1) * sub] = small[key]
                yield out

    desc0 = (
        f"Aperio Image Library v12.0.16 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({TILE}x{TILE}) JPEG/RGB Q=80|AppMag = {10 / mpp:g}|MPP = {mpp}"
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for n, ds in enumerate(levels):
            w, h = math.ceil(width / ds), math.ceil(height / ds)
            tif.write(
                tiles_for(ds),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": 80},
                photometric="rgb",
                description=desc0 if n == 0 else f"Aperio Image Library v12.0.16 \r\n{w}x{h}",
                metadata=None,
            )
