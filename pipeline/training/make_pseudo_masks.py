"""Stage 2: multi-layer pseudo masks of every training patch, one PNG folder per depth.

Masks are P-mode PNGs named like their patch (`<stem>.png`), values 0..K-1 for classes and
255 for background / no supervision, with the dataset's palette so they open as pictures.
A patch whose masks all exist is skipped, so an interrupted stage 2 picks up where it stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.pseudo_masks import pseudo_masks
from wsi_segment.models.segmenter import IGNORE_INDEX
from wsi_segment.pipeline.training.datasets import TrainItem, WsssDataset, load_batch
from wsi_segment.pipeline.training.train_classifier import progress_enabled

LAYERS = ("shallow", "mid", "deep")


def mask_palette(ds: WsssDataset) -> list[int]:
    """Class colours at 0..K-1, the background colour at 255, black elsewhere."""
    pal = [0] * 768
    for i, color in enumerate(ds.colors):
        pal[3 * i : 3 * i + 3] = color
    pal[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = ds.background_color
    return pal


def mask_name(item: TrainItem) -> str:
    """`<patch stem>.png` (the label part of the name is kept, so names stay unique)."""
    return item.image.with_suffix("").name + ".png"


def save_mask(mask: np.ndarray, path: Path, palette: list[int]) -> None:
    """Write atomically, so a killed run never leaves a truncated PNG that looks done."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(palette)
    tmp = path.with_name(path.name + ".tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, path)


def make_pseudo_masks(
    ds: WsssDataset,
    classifier: PatchClassifier,
    out: Path,
    device: torch.device,
    batch_size: int = 16,
    layers: tuple[str, ...] = LAYERS,
) -> list[Path]:
    """Write `out/<layer>/<stem>.png` for every training patch; returns the folders, shallow first."""
    dirs = [out / layer for layer in layers]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    items = ds.train_items()
    todo = [it for it in items if not all((d / mask_name(it)).is_file() for d in dirs)]
    palette = mask_palette(ds)
    classifier.eval()
    bar = tqdm(total=len(todo), desc="stage 2 pseudo masks", disable=not progress_enabled())
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        images = load_batch([it.image for it in chunk]).to(device)
        labels = torch.tensor([it.labels for it in chunk], dtype=torch.float32)
        masks = pseudo_masks(
            classifier, images, labels, layers=layers, use_background=ds.background_rule
        )
        for d, per_layer in zip(dirs, masks, strict=True):
            for it, m in zip(chunk, per_layer.numpy(), strict=True):
                save_mask(m, d / mask_name(it), palette)
        bar.update(len(chunk))
    bar.close()
    return dirs
