"""The whole weakly supervised training: stage 1 -> stage 2 -> stage 3 -> model folder.

Every stage keeps its state in the work folder (checkpoints, pseudo masks), so running the
same command again after an interruption continues instead of starting over. The final
folder is written by `models.bundle.save_model` and is what `wsi-segment SLIDE --model` reads.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_segment.models.bundle import save_model
from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.device import pick_device
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.precision_calibration import fit_tile
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.segmenter import Segmenter
from wsi_segment.models.validation_patches import ValidationPatches, choose
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.training.datasets import (
    MIN_TRAIN_PATCHES,
    WsssDataset,
    open_dataset,
    read_image,
)
from wsi_segment.pipeline.training.make_pseudo_masks import made_with, make_pseudo_masks
from wsi_segment.pipeline.training.train_classifier import (
    ClassifierConfig,
    classifier_history,
    train_classifier,
)
from wsi_segment.pipeline.training.train_config import (
    TrainConfig,
    check_config,
    classifier_config,
    preset_record,
    pseudo_mask_dir,
    recipe_choices,
    seg_encoder_name,
    segmenter_config,
)
from wsi_segment.pipeline.training.train_segmenter import SegmenterConfig, train_segmenter
from wsi_segment.pipeline.training.warm_start import pretrained_record
from wsi_segment.pipeline.training.work_folder import open_work_folder

__all__ = ["TrainConfig", "recorded_patches", "seg_encoder_name", "train"]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def train(cfg: TrainConfig, cancel: CancelToken = NEVER_CANCELLED) -> Path:
    """Run the three stages and write the model folder `cfg.out`; returns it. Once `cancel`
    is cancelled its stop is raised at the next step (the work folder is kept to resume)."""
    check_config(cfg)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(cfg, cancel)
    finally:  # leave the process as we found it (tests, notebooks)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def recorded_patches(ds: WsssDataset, tile_size: int) -> ValidationPatches:
    """The validation patches the model folder keeps for the bf16 calibration: up to 16 of
    the val split (the training patches when there is none), chosen by name, cropped or
    mirror-padded to the model's tile size."""
    if ds.has_masks("val"):
        split, paths = "val", [item.image for item in ds.mask_items("val")]
    else:
        split, paths = "train", [item.image for item in ds.train_items()]
    by_name = {p.name: p for p in paths}
    names = choose(list(by_name))
    pixels = np.stack([fit_tile(read_image(by_name[n]), tile_size) for n in names])
    return ValidationPatches(pixels, tuple(names), split)


def _checked_dataset(data: Path) -> WsssDataset:
    """The dataset with its training and validation patches read, so a malformed one fails
    here, before anything is written."""
    ds = open_dataset(data)
    ds.train_items(MIN_TRAIN_PATCHES)
    if ds.has_masks("val"):
        ds.mask_items("val")
    return ds


def _provenance(
    cfg: TrainConfig,
    ds: WsssDataset,
    work: Path,
    ccfg: ClassifierConfig,
    masks: Path,
    scfg: SegmenterConfig,
    seg_state: dict[str, Any],
    seconds: dict[str, float],
    device: torch.device,
) -> dict[str, Any]:
    """model.json's record of how the model was made (data, each stage's settings and
    history, seconds per stage, versions), plus what the caller adds in `cfg.provenance`."""
    return {
        "method": "Han et al. 2022 multi-layer pseudo-supervision (wsi-segment train)",
        "data": str(cfg.data),
        "dataset": {k: v for k, v in ds.to_json().items() if k not in ("classes", "colors")},
        "train_patches": len(ds.train_items()),
        "preset": preset_record(cfg),
        "classifier": {
            **asdict(ccfg),
            "history": classifier_history(work / "stage1"),
            "pretrained_weights": pretrained_record(work / "stage1"),
        },
        "pseudo_masks": made_with(masks),
        "segmenter": {
            **asdict(scfg),
            "history": seg_state["history"],
            "best": seg_state["best"],
            "pretrained_weights": pretrained_record(work / "stage3"),
        },
        "seconds": seconds,
        "device": str(device),
        "torch": torch.__version__,
        "commit": _git_commit(),
        **(cfg.provenance or {}),
    }


def _write_model(
    cfg: TrainConfig,
    ds: WsssDataset,
    classifier: PatchClassifier,
    segmenter: Segmenter,
    provenance: dict[str, Any],
) -> Path:
    """The model folder `cfg.out` (weights on the CPU, with the recorded validation patches)."""
    meta = ModelMeta(
        name=cfg.name or cfg.out.name,
        classes=list(ds.classes),
        colors=[(c[0], c[1], c[2]) for c in ds.colors],
        mpp=cfg.mpp,
        tile_size=cfg.tile_size,
        provenance=provenance,
        class_titles={c: t for c, t in ds.titles.items() if c in ds.classes},
    )
    model = SegmentationModel(classifier.cpu(), segmenter.cpu(), meta)
    return save_model(
        model,
        cfg.out,
        meta,
        weights_dtype="float16" if cfg.fp16 else "float32",
        validation_patches=recorded_patches(ds, cfg.tile_size),
    )


def _train(cfg: TrainConfig, cancel: CancelToken) -> Path:
    """The stages themselves; `train` wraps them in the thread and determinism settings."""
    t0 = time.time()
    ds = _checked_dataset(cfg.data)
    device = pick_device(cfg.device)
    work = open_work_folder(cfg)
    for line in recipe_choices(cfg):
        print(line, flush=True)

    ccfg = classifier_config(cfg)
    classifier = train_classifier(ds, ccfg, work / "stage1", device, cancel=cancel)
    t1 = time.time()
    masks = pseudo_mask_dir(cfg)
    pseudo_dirs = make_pseudo_masks(
        ds, classifier, masks, device, cfg.settings.batch_size, method=cfg.cam_method, cancel=cancel
    )
    t2 = time.time()
    scfg = segmenter_config(cfg)
    segmenter, seg_state = train_segmenter(
        ds, scfg, pseudo_dirs, work / "stage3", device, classifier, cancel
    )
    t3 = time.time()

    seconds = {
        "stage1": round(t1 - t0, 1),
        "stage2": round(t2 - t1, 1),
        "stage3": round(t3 - t2, 1),
    }
    provenance = _provenance(cfg, ds, work, ccfg, masks, scfg, seg_state, seconds, device)
    return _write_model(cfg, ds, classifier, segmenter, provenance)
