"""overlay.png: the slide thumbnail with class colours blended over the tissue, and a legend.

A quick look without QuPath: is the tissue found, do the classes make sense. The legend sits
in a white strip right of the image so it never hides tissue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.outputs.label_image import class_ids, open_label_levels

Color = tuple[int, int, int]


def label_thumbnail(zarr_path: str | Path, max_size: int = 2048) -> tuple[np.ndarray, int]:
    """Class ids (0..K-1, UNCLASSIFIED, NODATA) of the finest level of the store's label image whose larger
    side is <= `max_size` (the coarsest if none is): the class map the GeoJSON and the areas
    come from, never an argmax of rounded probabilities. Returns (labels, factor), factor =
    output pixels per label pixel (2**level). Never reads level 0 of a big slide.
    """
    levels = open_label_levels(zarr_path)
    chosen = len(levels) - 1
    for i, level in enumerate(levels):
        if max(level.shape) <= max_size:
            chosen = i
            break
    return class_ids(np.asarray(levels[chosen][:])), 2**chosen


def sample_labels(
    labels: np.ndarray,
    factor: int,
    level0_per_output: float,
    slide_wh: tuple[int, int],
    size_hw: tuple[int, int],
) -> np.ndarray:
    """The label each pixel of a `size_hw` picture of the whole slide shows.

    Picture pixel (x, y) shows the output pixel under its centre, the level-0 point
    ((x + 0.5) W / w, (y + 0.5) H / h), as its label level stores it: index
    floor(output pixel / factor), which the nearest pyramid took from output pixel
    factor * index. So at factor 1 the overlay is exactly the label raster, sampled.
    """
    h, w = size_hw

    def index(n: int, extent: int, limit: int) -> np.ndarray:
        out_px = np.floor((np.arange(n) + 0.5) * (extent / n) / level0_per_output)
        picked: np.ndarray = np.minimum(out_px.astype(np.int64) // factor, limit - 1)
        return picked

    rows = index(h, slide_wh[1], labels.shape[0])
    cols = index(w, slide_wh[0], labels.shape[1])
    shown: np.ndarray = labels[np.ix_(rows, cols)]
    return shown


def _resize_nearest(labels: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize that never invents class values."""
    if labels.shape[::-1] == size_wh:
        return labels
    return np.asarray(Image.fromarray(labels).resize(size_wh, Image.Resampling.NEAREST))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(
    thumbnail_rgb: np.ndarray,
    label_thumb: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[Color],
    alpha: float = 0.4,
) -> Image.Image:
    """The overlay as a PIL image: blended thumbnail plus a legend strip on the right."""
    if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] < 3:
        raise ConfigError(f"thumbnail must be (h, w, 3) RGB, got shape {thumbnail_rgb.shape}")
    if len(class_names) != len(colors):
        raise ConfigError(f"{len(class_names)} class names but {len(colors)} colours")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be within 0..1, got {alpha}")
    rgb = np.ascontiguousarray(thumbnail_rgb[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    labels = _resize_nearest(np.asarray(label_thumb, dtype=np.uint8), (w, h))
    palette = np.zeros((256, 3), dtype=np.float32)
    palette[: len(colors)] = np.asarray(colors, dtype=np.float32)
    tissue = labels < len(colors)
    out = rgb.astype(np.float32)
    out[tissue] = (1 - alpha) * out[tissue] + alpha * palette[labels[tissue]]
    image = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    return _with_legend(image, class_names, colors)


def _with_legend(
    image: Image.Image, class_names: Sequence[str], colors: Sequence[Color]
) -> Image.Image:
    """Append a white legend strip: one colour swatch and name per class."""
    size = max(12, min(32, math.ceil(image.height / 40)))
    font = _font(size)
    # one line per class: names come from model.json, and Pillow cannot measure multiline text
    class_names = [" ".join(str(n).split()) for n in class_names]
    pad = size // 2
    probe = ImageDraw.Draw(image)
    text_w = max((probe.textlength(str(n), font=font) for n in class_names), default=0)
    legend_w = int(pad * 3 + size + text_w)
    legend_h = pad + len(class_names) * (size + pad)
    canvas = Image.new("RGB", (image.width + legend_w, max(image.height, legend_h)), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.width + pad
    for i, (name, color) in enumerate(zip(class_names, colors, strict=True)):
        y = pad + i * (size + pad)
        draw.rectangle(
            [x0, y, x0 + size - 1, y + size - 1], fill=tuple(int(c) for c in color), outline="black"
        )
        draw.text((x0 + size + pad, y), str(name), fill="black", font=font)
    return canvas


def write_overlay(
    path: str | Path,
    thumbnail_rgb: np.ndarray,
    label_thumb: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[Color],
    alpha: float = 0.4,
) -> Path:
    """Write overlay.png. `label_thumb` (indices into `class_names`; any value past them, e.g.
    255, is left uncoloured) is resized (nearest) to the
    thumbnail, so any label resolution works as long as it covers the same area.
    """
    return save_overlay(
        render_overlay(thumbnail_rgb, label_thumb, class_names, colors, alpha), path
    )


def save_overlay(image: Image.Image, path: str | Path) -> Path:
    """Write a rendered overlay (`render_overlay`) as overlay.png."""
    path = Path(path)
    # compress_level 3: half the time of the default 6 for a file ~1 % larger (textured tissue)
    image.save(path, format="PNG", compress_level=3)
    return path
