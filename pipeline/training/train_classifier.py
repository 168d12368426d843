"""Stage 1: the multi-label patch classifier (PDA head by default), resumable per epoch.

Multilabel soft margin loss on the patch-level labels, random flips, the recipe's optimiser
(`pipeline.training.recipes`: AdamW, or the official code's SGD with per-group learning rates
and frozen BatchNorm) with the official code's poly learning-rate decay (per step;
`lr_schedule="constant"` turns it off), optionally from pretrained encoder weights. The PDA
schedule is stepped once per epoch; after every epoch the weights, the optimizer state and
the schedule position are checkpointed (safetensors + JSON), so an interrupted run resumes
at the next epoch and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wsi_segment.errors import ConfigError
from wsi_segment.models.classifier import PatchClassifier, build_classifier
from wsi_segment.models.heads import DEFAULT_DROPOUT, PDASchedule
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, CancelToken
from wsi_segment.pipeline.training.checkpoints import load_checkpoint, save_checkpoint
from wsi_segment.pipeline.training.datasets import MIN_TRAIN_PATCHES, TrainItem, WsssDataset
from wsi_segment.pipeline.training.recipes import Optim, freeze, make_optimizer, train_mode
from wsi_segment.pipeline.training.train_batches import (
    augment,
    batch_count,
    epoch_batches,
    load_batch,
)
from wsi_segment.pipeline.training.warm_start import warm_start


@dataclass(frozen=True)
class ClassifierConfig:
    """Stage-1 settings; `max_steps` (per epoch) exists for smoke tests only.

    `dropout` is the head's channel dropout (the method's 0.5 by default); `pda_schedule`
    names the PDA schedule (paper | official) and `pda_sigma` / `pda_floor` / `pda_warmup`
    replace parts of it (pda head only). `optim` is the recipe's stage-1 optimiser and
    `pretrained` a weights file or timm name the encoder starts from.
    """

    encoder: str = "resnet18"
    head: str = "pda"
    output_stride: int = 16
    dropout: float = DEFAULT_DROPOUT
    pda_schedule: str = "paper"
    pda_sigma: float | None = None
    pda_floor: float | None = None
    pda_warmup: int | None = None
    epochs: int = 20
    batch_size: int = 16
    optim: Optim = field(default_factory=Optim)
    recipe: str = "default"
    pretrained: str | None = None
    lr_schedule: str = "poly"
    seed: int = 0
    max_steps: int | None = None


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float in [0, 1] on `device` (no ImageNet normalisation, as the paper's code)."""
    return images.to(device, non_blocking=True).float().div_(255.0)


def seeded(seed: int, stage: int, epoch: int) -> torch.Generator:
    """One generator per (seed, stage, epoch): shuffles and flips repeat exactly after a resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + epoch)


LR_SCHEDULES = ("poly", "constant")


def scheduled_lr(base: float, schedule: str, step: int, total: int, power: float = 0.9) -> float:
    """Learning rate at `step` of `total`: poly `base * (1 - step/total) ** 0.9` (the official
    code's) or constant. A function of the global step only, so a resumed run is identical."""
    if schedule == "constant":
        return base
    if schedule == "poly":
        return base * float((1.0 - min(step, total) / max(total, 1)) ** power)
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def schedule_lrs(
    opt: torch.optim.Optimizer, base: list[float], schedule: str, step: int, total: int
) -> None:
    """Every parameter group at its own base rate, scaled by the schedule at `step`."""
    for group, lr in zip(opt.param_groups, base, strict=True):
        group["lr"] = scheduled_lr(lr, schedule, step, total)


def progress_enabled() -> bool:
    """Bars only on a terminal, so logs and CI stay clean."""
    return sys.stderr is not None and sys.stderr.isatty()


def pda_schedule(cfg: ClassifierConfig) -> PDASchedule | None:
    """The PDA schedule `cfg` asks for (None for other heads, which must not ask for one)."""
    tuned = (cfg.pda_sigma, cfg.pda_floor, cfg.pda_warmup) != (None, None, None)
    if cfg.head != "pda":
        if tuned or cfg.pda_schedule != "paper":
            raise ConfigError(
                f"--pda-schedule, --pda-sigma, --pda-floor and --pda-warmup apply to the pda "
                f"head only, not to --head {cfg.head}"
            )
        return None
    return PDASchedule.preset(
        cfg.pda_schedule, sigma=cfg.pda_sigma, floor=cfg.pda_floor, warmup_epochs=cfg.pda_warmup
    )


def head_spec(cfg: ClassifierConfig) -> dict[str, Any]:
    """The head as `build_classifier` takes it: kind, dropout and (pda) the schedule."""
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    spec: dict[str, Any] = {"kind": cfg.head, "dropout": cfg.dropout}
    schedule = pda_schedule(cfg)
    if schedule is not None:
        spec["schedule"] = schedule
    return spec


def build(cfg: ClassifierConfig, num_classes: int) -> PatchClassifier:
    torch.manual_seed(cfg.seed)
    return build_classifier(
        cfg.encoder, head_spec(cfg), num_classes, output_stride=cfg.output_stride
    )


def seed_dropout(seed: int, stage: int, epoch: int) -> None:
    """Seed torch's global generator (dropout masks) per epoch, apart from `seeded`'s stream,
    so a resumed run draws the same masks as an uninterrupted one."""
    torch.manual_seed(seeded(seed, stage + 100, epoch).initial_seed())


def epoch_steps(n_items: int, batch_size: int, max_steps: int | None) -> int:
    """Batches per epoch, capped by `max_steps` (smoke tests); the lr schedule counts in these."""
    steps = batch_count(n_items, batch_size)
    return steps if max_steps is None else min(steps, max_steps)


def _prepared_classifier(
    cfg: ClassifierConfig, num_classes: int, work: Path, device: torch.device
) -> tuple[PatchClassifier, nn.Module, torch.optim.Optimizer, list[float]]:
    """The seeded classifier on `device`, its encoder warm-started and frozen as the recipe
    says, with the optimiser and each group's base learning rate."""
    model = build(cfg, num_classes)
    encoder = model.backbone
    if not isinstance(encoder, nn.Module):
        raise TypeError("train_classifier needs a classifier whose backbone is an nn.Module")
    warm_start(encoder, cfg.pretrained, work, "classifier encoder", work)
    model = model.to(device)
    freeze(model, encoder, cfg.optim)
    opt, base_lrs = make_optimizer(model, [model.head], cfg.optim)
    return model, encoder, opt, base_lrs


def _train_epoch(
    model: PatchClassifier,
    encoder: nn.Module,
    opt: torch.optim.Optimizer,
    base_lrs: list[float],
    items: list[TrainItem],
    labels: torch.Tensor,
    cfg: ClassifierConfig,
    epoch: int,
    steps: int,
    device: torch.device,
    cancel: CancelToken,
) -> float:
    """One epoch of stage 1, its shuffles, flips and dropout seeded by the epoch (so a resumed
    run repeats it exactly) and the PDA schedule stepped at its end; returns the mean loss.
    `cancel` is checked before each step."""
    schedule = getattr(model.head, "schedule", None)
    if schedule is not None:
        schedule.epoch = epoch
    train_mode(model, encoder, cfg.optim)
    gen = seeded(cfg.seed, 1, epoch)
    seed_dropout(cfg.seed, 1, epoch)
    batches = epoch_batches(len(items), cfg.batch_size, gen)[:steps]
    bar = tqdm(
        batches, desc=f"stage 1 epoch {epoch + 1}/{cfg.epochs}", disable=not progress_enabled()
    )
    total, seen = 0.0, 0
    for step, idx in enumerate(bar):
        cancel.check()
        schedule_lrs(opt, base_lrs, cfg.lr_schedule, epoch * steps + step, cfg.epochs * steps)
        images, _ = augment(load_batch([items[i].image for i in idx]), [], gen)
        logits = model(to_input(images, device))
        loss = F.multilabel_soft_margin_loss(logits, labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        postfix = {"loss": f"{total / seen:.4f}"}
        if schedule is not None:
            postfix["mu"] = f"{schedule.mu:.3f}" if schedule.active else "off"
        bar.set_postfix(postfix)
    if schedule is not None:
        schedule.step()
    return total / max(seen, 1)


def train_classifier(
    ds: WsssDataset,
    cfg: ClassifierConfig,
    work: Path,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> PatchClassifier:
    """Train (or resume, or just load if finished) the classifier; checkpoints in `work`.

    `on_epoch(epoch, state)` runs after each saved checkpoint (progress reporting, tests).
    Once `cancel` is cancelled its stop is raised before the next step: the epoch's
    checkpoint is not written, and a rerun resumes from the last one.
    """
    items = ds.train_items(MIN_TRAIN_PATCHES)
    labels = torch.tensor([it.labels for it in items], dtype=torch.float32)
    model, encoder, opt, base_lrs = _prepared_classifier(cfg, ds.num_classes, work, device)
    state = load_checkpoint(work, model, opt) or {"epoch": 0, "history": []}
    steps = epoch_steps(len(items), cfg.batch_size, cfg.max_steps)
    for epoch in range(int(state["epoch"]), cfg.epochs):
        loss = _train_epoch(
            model, encoder, opt, base_lrs, items, labels, cfg, epoch, steps, device, cancel
        )
        state = {
            "epoch": epoch + 1,
            "history": [*state["history"], {"epoch": epoch + 1, "loss": loss}],
        }
        save_checkpoint(work, model, opt, state)
        if not progress_enabled():
            print(f"stage 1 epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1, state)
    schedule = getattr(model.head, "schedule", None)
    if schedule is not None:
        schedule.epoch = cfg.epochs
    model.eval()
    return model


def classifier_history(work: Path) -> list[dict[str, Any]]:
    """Per-epoch losses of the checkpoint in `work` (for model.json provenance)."""
    import json

    f = Path(work) / "state.json"
    return json.loads(f.read_text())["state"]["history"] if f.is_file() else []
