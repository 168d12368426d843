"""Stage 3: DeepLabV3+ trained on the three pseudo masks of every training patch.

Loss = 0.2 CE(shallow) + 0.2 CE(mid) + 0.6 CE(deep), background pixels (255) carry no loss
(`loss="ours"`), or the official code's scaling (`loss="official"`, models.segmenter).
After each epoch the model is scored on the validation split as the slide path would label
it (`evaluate.module_predictor`: gated by the classifier, as at inference, unless `val_gate`
is off as in the official code) and the epoch with the best mIoU is kept. Checkpoints every
epoch, resumable. The recipe's optimiser with poly learning-rate decay per step, as in
stage 1 (`lr_schedule`), optionally from a pretrained encoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from tqdm import tqdm

from wsi_segment.errors import ConfigError
from wsi_segment.models.segmenter import (
    DEFAULT_LAYER_WEIGHTS,
    SEG_LOSSES,
    PseudoLoss,
    Segmenter,
    build_segmenter,
)
from wsi_segment.models.tensor_files import write_tensors
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.training.checkpoints import load_checkpoint, save_checkpoint
from wsi_segment.pipeline.training.datasets import MIN_TRAIN_PATCHES, TrainItem, WsssDataset
from wsi_segment.pipeline.training.evaluate import module_predictor, score_split
from wsi_segment.pipeline.training.make_pseudo_masks import mask_name
from wsi_segment.pipeline.training.recipes import Optim, freeze, make_optimizer, train_mode
from wsi_segment.pipeline.training.train_batches import augment, epoch_batches, load_batch
from wsi_segment.pipeline.training.train_classifier import (
    epoch_steps,
    progress_enabled,
    schedule_lrs,
    seed_dropout,
    seeded,
    to_input,
)
from wsi_segment.pipeline.training.warm_start import warm_start

#: The stage folder's checkpoint of the last finished epoch (resumed from).
CHECKPOINT = "last"


@dataclass(frozen=True)
class SegmenterConfig:
    """Stage-3 settings; `crop` trains on random square crops (masks cropped alike).

    `optim` is the recipe's stage-3 optimiser, `pretrained` a weights file or timm name the
    encoder starts from; `vflip` / `blur` switch the vertical flips and the official
    Gaussian blur, `loss` names one of `SEG_LOSSES`, `val_gate` gates validation.
    """

    encoder: str = "resnet18"
    epochs: int = 20
    batch_size: int = 16
    optim: Optim = field(default_factory=Optim)
    recipe: str = "default"
    pretrained: str | None = None
    vflip: bool = True
    blur: bool = False
    loss: str = "ours"
    val_gate: bool = True
    seed: int = 0
    crop: int | None = None
    decoder_channels: int = 256
    layer_weights: tuple[float, ...] = DEFAULT_LAYER_WEIGHTS
    gate_epsilon: float = 0.1
    lr_schedule: str = "poly"
    max_steps: int | None = None


def _read_pseudo(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.uint8)


def validate(
    ds: WsssDataset,
    segmenter: torch.nn.Module,
    classifier: torch.nn.Module | None,
    device: torch.device,
    split: str = "val",
    batch_size: int = 16,
    gate_epsilon: float = 0.1,
) -> float:
    """Split mIoU of what the slide path would write (gated by the classifier when given:
    tissue the gate leaves with no class is `Unclassified`, wrong on a labelled pixel)."""
    segmenter.eval()
    predictor = module_predictor(segmenter, classifier, gate_epsilon, device)
    (cm,) = score_split(ds, split, predictor, 1, batch_size)
    return cm.scores().miou


def _checked_loss(cfg: SegmenterConfig, pseudo_dirs: list[Path]) -> PseudoLoss:
    """The loss `cfg` names, once there is one pseudo-mask folder per loss weight."""
    if len(pseudo_dirs) != len(cfg.layer_weights):
        raise ValueError(
            f"{len(pseudo_dirs)} pseudo-mask folders for {len(cfg.layer_weights)} loss weights"
        )
    if cfg.loss not in SEG_LOSSES:
        raise ConfigError(f"--seg-loss must be one of {sorted(SEG_LOSSES)}, got {cfg.loss!r}")
    return SEG_LOSSES[cfg.loss]


def _prepared_segmenter(
    cfg: SegmenterConfig, num_classes: int, work: Path, device: torch.device
) -> tuple[Segmenter, torch.nn.Module, torch.optim.Optimizer, list[float]]:
    """The seeded segmenter on `device`, its encoder warm-started and frozen as the recipe
    says, with the optimiser and each group's base learning rate."""
    torch.manual_seed(cfg.seed)
    model = build_segmenter(cfg.encoder, num_classes, decoder_channels=cfg.decoder_channels)
    encoder = model.net.encoder
    warm_start(
        encoder, cfg.pretrained, work, "segmenter encoder", work / CHECKPOINT, whole=model.net
    )
    model = model.to(device)
    freeze(model, encoder, cfg.optim)
    opt, base_lrs = make_optimizer(
        model, [model.net.decoder, model.net.segmentation_head], cfg.optim
    )
    return model, encoder, opt, base_lrs


def _pseudo_batch(pseudo_dirs: list[Path], names: list[str]) -> list[torch.Tensor]:
    """One uint8 (N, H, W) stack of the named pseudo masks per folder (one per loss layer)."""
    return [torch.from_numpy(np.stack([_read_pseudo(d / n) for n in names])) for d in pseudo_dirs]


def _train_epoch(
    model: Segmenter,
    encoder: torch.nn.Module,
    opt: torch.optim.Optimizer,
    base_lrs: list[float],
    items: list[TrainItem],
    pseudo_dirs: list[Path],
    loss_fn: PseudoLoss,
    cfg: SegmenterConfig,
    epoch: int,
    steps: int,
    device: torch.device,
    cancel: CancelToken,
) -> float:
    """One epoch of stage 3, its shuffles, crops, flips and dropout masks (DeepLabV3+'s ASPP
    draws from torch's global generator) seeded by the epoch, so a resumed run repeats it
    exactly; returns the mean loss. `cancel` is checked before each step."""
    train_mode(model, encoder, cfg.optim)
    seed_dropout(cfg.seed, 3, epoch)
    gen = seeded(cfg.seed, 3, epoch)
    bar = tqdm(
        epoch_batches(len(items), cfg.batch_size, gen)[:steps],
        desc=f"stage 3 epoch {epoch + 1}/{cfg.epochs}",
        disable=not progress_enabled(),
    )
    total, seen = 0.0, 0
    for step, idx in enumerate(bar):
        cancel.check()
        schedule_lrs(opt, base_lrs, cfg.lr_schedule, epoch * steps + step, cfg.epochs * steps)
        masks = _pseudo_batch(pseudo_dirs, [mask_name(items[i]) for i in idx])
        images, masks = augment(
            load_batch([items[i].image for i in idx]),
            masks,
            gen,
            cfg.crop,
            vflip=cfg.vflip,
            blur=cfg.blur,
        )
        logits = model(to_input(images, device))
        loss = loss_fn(logits, [m.to(device) for m in masks], cfg.layer_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / max(seen, 1)


def _kept_best(
    work: Path, model: Segmenter, record: dict[str, float], best: dict[str, float] | None
) -> dict[str, float] | None:
    """The best epoch so far: by val mIoU, else by lowest loss. When it is this epoch its
    weights are written to `best.safetensors` (through a temporary file, so a crash mid-write
    leaves the previous best whole)."""
    score = record.get("val_miou", -record["loss"])
    if best is None or not math.isfinite(best["score"]) or score > best["score"]:
        best = {**record, "score": score}
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_tensors(weights, work / "best.safetensors.tmp")
        (work / "best.safetensors.tmp").replace(work / "best.safetensors")
    return best


def train_segmenter(
    ds: WsssDataset,
    cfg: SegmenterConfig,
    pseudo_dirs: list[Path],
    work: Path,
    device: torch.device,
    classifier: torch.nn.Module | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> tuple[Segmenter, dict[str, Any]]:
    """Train (or resume) the segmenter on pseudo masks; returns the best-epoch model and its
    record. Once `cancel` is cancelled its stop is raised before the next step."""
    loss_fn = _checked_loss(cfg, pseudo_dirs)
    items = ds.train_items(MIN_TRAIN_PATCHES)
    work.mkdir(parents=True, exist_ok=True)
    model, encoder, opt, base_lrs = _prepared_segmenter(cfg, ds.num_classes, work, device)
    state = load_checkpoint(work / CHECKPOINT, model, opt) or {
        "epoch": 0,
        "history": [],
        "best": None,
    }
    has_val = ds.has_masks("val")
    steps = epoch_steps(len(items), cfg.batch_size, cfg.max_steps)
    for epoch in range(int(state["epoch"]), cfg.epochs):
        loss = _train_epoch(
            model, encoder, opt, base_lrs, items, pseudo_dirs, loss_fn, cfg, epoch, steps, device,
            cancel,
        )  # fmt: skip
        record = {"epoch": epoch + 1, "loss": loss}
        if has_val:
            record["val_miou"] = validate(
                ds,
                model,
                classifier if cfg.val_gate else None,
                device,
                "val",
                cfg.batch_size,
                cfg.gate_epsilon,
            )
            print(
                f"stage 3 epoch {epoch + 1}: loss {record['loss']:.4f} val mIoU {record['val_miou']:.4f}"
            )
        best = _kept_best(work, model, record, state["best"])
        state = {"epoch": epoch + 1, "history": [*state["history"], record], "best": best}
        save_checkpoint(work / CHECKPOINT, model, opt, state)
    if (work / "best.safetensors").is_file():
        model.load_state_dict(load_file(str(work / "best.safetensors")))
    (work / "result.json").write_text(json.dumps(state, indent=1))
    model.eval()
    return model, state
