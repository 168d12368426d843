"""Stage 2: multi-layer pseudo masks of every training patch, one PNG folder per depth.

Masks are P-mode PNGs named like their patch (`<stem>.png`), values 0..K-1 for classes and
255 for background / no supervision, with the dataset's palette so they open as pictures.
A patch whose masks all exist is skipped, so an interrupted stage 2 picks up where it stopped.
`method.json` beside the folders says how the masks were made (CAM method, depths, taps):
model.json's provenance copies it, and a rerun that asks for another method is refused
instead of training stage 3 on masks of the old one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wsi_segment.errors import ConfigError
from wsi_segment.models.backbone import Backbone
from wsi_segment.models.cam_methods import (
    DEFAULT_CAM_METHOD,
    DEFAULT_LAYERS,
    cam_method,
    pseudo_mask_record,
)
from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.pseudo_masks import mask_taps, pseudo_masks
from wsi_segment.models.segmenter import IGNORE_INDEX
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.training.datasets import TrainItem, WsssDataset
from wsi_segment.pipeline.training.train_batches import load_batch
from wsi_segment.pipeline.training.train_classifier import progress_enabled

LAYERS = DEFAULT_LAYERS
METHOD_FILE = "method.json"


def made_with(out: Path) -> dict[str, Any] | None:
    """The record of the masks in `out` (None: no masks yet). Masks without a record were
    made before stage 2 recorded its method, when it always used Grad-CAM."""
    f = out / METHOD_FILE
    if f.is_file():
        try:
            record = json.loads(f.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("method"), str):
                raise ValueError("no 'method'")
        except ValueError as exc:
            raise ConfigError(
                f"{f}: unreadable ({exc}); delete {out} to make the pseudo masks again"
            ) from exc
        return record
    if out.is_dir() and any(next((out / layer).glob("*.png"), None) for layer in LAYERS):
        return {"method": DEFAULT_CAM_METHOD}
    return None


def check_pseudo_mask_folder(out: Path, method: str) -> None:
    """Refuse to reuse masks made with another method (before any training starts)."""
    cam_method(method)
    record = made_with(out)
    if record is not None and record["method"] != method:
        raise ConfigError(
            f"{out}: holds pseudo masks made with --cam-method {record['method']}, and this "
            f"run asks for {method}; delete that folder to make them again, or give another "
            "--work-dir"
        )


def _forwards_per_patch(classifier: PatchClassifier, taps: list[str]) -> int | None:
    """Score-CAM's classifier forward passes per patch: one per channel of every depth."""
    bb = classifier.backbone
    return sum(bb.channels[t] for t in dict.fromkeys(taps)) if isinstance(bb, Backbone) else None


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
    method: str = DEFAULT_CAM_METHOD,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[Path]:
    """Write `out/<layer>/<stem>.png` for every training patch with the CAM method `method`
    (and `out/method.json`); returns the folders, shallow first. Once `cancel` is cancelled
    its stop is raised before the next batch (the masks written are kept for a rerun)."""
    check_pseudo_mask_folder(out, method)
    taps = mask_taps(classifier, method, layers)
    record = pseudo_mask_record(method, layers, taps, ds.background_rule)
    dirs = [out / layer for layer in layers]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    if made_with(out) != record:
        tmp = out / (METHOD_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, out / METHOD_FILE)
    items = ds.train_items()
    todo = [it for it in items if not all((d / mask_name(it)).is_file() for d in dirs)]
    forwards = _forwards_per_patch(classifier, taps) if method == "scorecam" else None
    if todo and forwards is not None:
        print(
            f"stage 2: Score-CAM runs {forwards} classifier forward passes per patch "
            f"({len(todo)} patches to do)",
            flush=True,
        )
    palette = mask_palette(ds)
    classifier.eval()
    bar = tqdm(total=len(todo), desc="stage 2 pseudo masks", disable=not progress_enabled())
    for i in range(0, len(todo), batch_size):
        cancel.check()
        chunk = todo[i : i + batch_size]
        images = load_batch([it.image for it in chunk]).to(device)
        labels = torch.tensor([it.labels for it in chunk], dtype=torch.float32)
        masks = pseudo_masks(
            classifier,
            images,
            labels,
            layers=layers,
            use_background=ds.background_rule,
            method=method,
        )
        for d, per_layer in zip(dirs, masks, strict=True):
            for it, m in zip(chunk, per_layer.numpy(), strict=True):
                save_mask(m, d / mask_name(it), palette)
        bar.update(len(chunk))
    bar.close()
    return dirs
