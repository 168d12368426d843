"""`pipeline.training.train.train` cut into its stages, so an orchestrator can run each on its own.

The Prefect train flow makes each stage a task (own retries, own timing, visible progress).
Every stage keeps its state in the work folder exactly as `train()` does, so the stages
resume after an interruption, and the last step calls `train()` itself: it finds every
stage finished (it only loads checkpoints and masks) and writes the model folder with the
same provenance as a plain `wsi-segment train`. Both use the stage settings of
`pipeline.training.train_config`; `tests/flows/test_train_flow.py` checks they give the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.device import pick_device
from wsi_segment.models.segmenter import Segmenter
from wsi_segment.pipeline.cancellation import CancelToken
from wsi_segment.pipeline.training.datasets import MIN_TRAIN_PATCHES, WsssDataset, open_dataset
from wsi_segment.pipeline.training.make_pseudo_masks import make_pseudo_masks
from wsi_segment.pipeline.training.train import train
from wsi_segment.pipeline.training.train_classifier import train_classifier
from wsi_segment.pipeline.training.train_config import (
    TrainConfig,
    check_config,
    classifier_config,
    pseudo_mask_dir,
    recipe_choices,
    segmenter_config,
)
from wsi_segment.pipeline.training.train_segmenter import train_segmenter
from wsi_segment.pipeline.training.work_folder import open_work_folder


@dataclass
class TrainRun:
    """What the stages share: the settings, the opened dataset, the device, the work folder,
    and the token that stops them (checked before each step)."""

    cfg: TrainConfig
    ds: WsssDataset
    device: torch.device
    work: Path
    cancel: CancelToken


def start(cfg: TrainConfig, cancel: CancelToken) -> TrainRun:
    """Check settings, open the dataset, pick the device, create the work folder."""
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    ds = open_dataset(cfg.data)
    ds.train_items(MIN_TRAIN_PATCHES)  # a malformed dataset fails here, before any write
    work = open_work_folder(cfg)
    for line in recipe_choices(cfg):
        print(line, flush=True)
    return TrainRun(cfg, ds, pick_device(cfg.device), work, cancel)


def stage1_classifier(run: TrainRun) -> PatchClassifier:
    """Train (or resume, or load when finished) the patch classifier."""
    return train_classifier(
        run.ds, classifier_config(run.cfg), run.work / "stage1", run.device, cancel=run.cancel
    )


def stage2_pseudo_masks(run: TrainRun, classifier: PatchClassifier) -> list[Path]:
    """Pseudo masks of every training patch at three depths (existing masks are kept)."""
    return make_pseudo_masks(
        run.ds,
        classifier,
        pseudo_mask_dir(run.cfg),
        run.device,
        run.cfg.settings.batch_size,
        method=run.cfg.cam_method,
        cancel=run.cancel,
    )


def stage3_segmenter(
    run: TrainRun, pseudo_dirs: list[Path], classifier: PatchClassifier
) -> tuple[Segmenter, dict[str, Any]]:
    """Train (or resume) DeepLabV3+ on the multi-layer pseudo masks."""
    cfg = segmenter_config(run.cfg)
    work = run.work / "stage3"
    return train_segmenter(run.ds, cfg, pseudo_dirs, work, run.device, classifier, run.cancel)


def write_model(run: TrainRun) -> Path:
    """The model folder, through `train()` (which now only loads the finished stages)."""
    return train(run.cfg, run.cancel)
