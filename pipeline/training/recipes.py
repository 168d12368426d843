"""Named training recipes: the optimiser, its parameter groups, what is frozen, and the
stage-3 choices, as one name -> settings table.

`default` is this project's AdamW from random weights. `paper` is the official
WSSS-Tissue code's as it is meant: stage 1 SGD (momentum 0.9) at lr 0.01 with 2x for biases and 10x for
the new classifier layer, weight decay 5e-4 but none on biases, BatchNorm frozen (running
statistics and affine parameters) and the stem and first stage frozen; stage 3 SGD at 0.01
with 10x for the decoder, weight decay 5e-4 everywhere, BatchNorm training; horizontal flips
and Gaussian blur, the official loss, ungated validation. A recipe made for pretrained
weights: `resolve_recipe` picks it when training starts from them and no recipe is named.
`official` is `paper` with the stage-1 momentum the official code really trains with, 5e-4,
and a `Preset` of the official code's other settings (batch size, epochs, PDA schedule, stride).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from wsi_segment.errors import ConfigError
from wsi_segment.models.pretrained import canonical

OPTIMIZERS = ("adamw", "sgd")
SEG_LOSSES = ("ours", "official")
#: Stage names of `Optim.frozen_stages` -> the module names they cover (timm / smp ResNets).
STAGE_MODULES = {
    "stem": ("conv1", "bn1"),
    "layer1": ("layer1",),
    "layer2": ("layer2",),
    "layer3": ("layer3",),
}


# Every BatchNorm by its public classes (timm's BatchNormAct2d is a BatchNorm2d).
BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)


@dataclass(frozen=True)
class Optim:
    """One stage's optimiser settings; recorded in model.json as they were used.

    Parameter groups: encoder weights at `lr`; biases (`*.bias`) at `lr * bias_lr_mult`;
    the new layers (classifier head; DeepLabV3+ decoder and segmentation head) at
    `lr * head_lr_mult` (their biases at both multipliers). `bias_weight_decay` False keeps
    biases out of weight decay. `freeze_bn` keeps every BatchNorm in eval mode with its affine
    parameters fixed; `frozen_stages` fixes whole encoder stages (their BatchNorm too).
    """

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    bias_lr_mult: float = 1.0
    head_lr_mult: float = 1.0
    bias_weight_decay: bool = True
    freeze_bn: bool = False
    frozen_stages: tuple[str, ...] = ()

    @property
    def grouped(self) -> bool:
        """Whether parameters need groups (a single group keeps older checkpoints loadable)."""
        return (self.bias_lr_mult, self.head_lr_mult, self.bias_weight_decay) != (1.0, 1.0, True)


@dataclass(frozen=True)
class Preset:
    """`TrainConfig` settings a recipe brings besides the optimiser; None leaves the project's
    default (`PROJECT_DEFAULTS`). A value the user gives explicitly wins over both."""

    seg_epochs: int | None = None
    batch_size: int | None = None
    pda_schedule: str | None = None
    classifier_output_stride: int | None = None


#: What a setting is when neither the user nor the recipe's preset gives it (`seg_epochs`
#: None: the same as `epochs`).
PROJECT_DEFAULTS = Preset(batch_size=16, pda_schedule="paper", classifier_output_stride=16)


@dataclass(frozen=True)
class Recipe:
    """A named set of training settings for stages 1 and 3."""

    name: str
    stage1: Optim
    stage3: Optim
    preset: Preset = Preset()
    seg_vflip: bool = True  # stage-3 vertical flips (horizontal ones always)
    seg_blur: bool = False  # stage-3 Gaussian blur, p 0.5, radius U(0, 1)
    seg_loss: str = "ours"  # ours | official
    val_gate: bool = True  # stage-3 validation through the classification gate


RECIPES: dict[str, Recipe] = {
    "default": Recipe("default", Optim(), Optim()),
    "paper": Recipe(
        "paper",
        Optim(
            "sgd",
            lr=0.01,
            weight_decay=5e-4,
            bias_lr_mult=2.0,
            head_lr_mult=10.0,
            bias_weight_decay=False,
            freeze_bn=True,
            frozen_stages=("stem", "layer1"),
        ),
        Optim("sgd", lr=0.01, weight_decay=5e-4, head_lr_mult=10.0),
        seg_vflip=False,
        seg_blur=True,
        seg_loss="official",
        val_gate=False,
    ),
}
# The official code builds its stage-1 optimiser as `SGD(params, lr, weight_decay)`, and SGD's
# third positional parameter is the momentum: it trains with momentum 5e-4 (its per-group
# weight decays still apply). `official` runs what the code runs (`run_pipeline.sh` and the
# scripts' defaults: batch 20, 30 stage-3 epochs, its PDA schedule, the stride-8 ResNet-38);
# `paper` what it means.
RECIPES["official"] = replace(
    RECIPES["paper"],
    name="official",
    stage1=replace(RECIPES["paper"].stage1, momentum=5e-4),
    preset=Preset(
        seg_epochs=30, batch_size=20, pda_schedule="official", classifier_output_stride=8
    ),
)


def resolve_recipe(
    name: str | None,
    pretrained: bool,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
    bias_lr_mult: float | None = None,
    head_lr_mult: float | None = None,
    bias_weight_decay: bool | None = None,
    momentum: float | None = None,
) -> Recipe:
    """The recipe `name` (None: `paper` from pretrained weights, else `default`) with the
    given settings replaced in both stages."""
    chosen = name or ("paper" if pretrained else "default")
    if chosen not in RECIPES:
        raise ConfigError(f"unknown --recipe {chosen!r}; use one of {sorted(RECIPES)}")
    changes: dict[str, Any] = {
        k: v
        for k, v in (
            ("lr", lr),
            ("weight_decay", weight_decay),
            ("bias_lr_mult", bias_lr_mult),
            ("head_lr_mult", head_lr_mult),
            ("momentum", momentum),
        )
        if v is not None
    }
    for key, value in changes.items():
        if not math.isfinite(value) or value < 0 or (key == "lr" and value == 0):  # NaN too
            bound = "> 0" if key == "lr" else ">= 0"
            raise ConfigError(f"--{key.replace('_', '-')} must be {bound}, got {value}")
    if changes.get("momentum", 0.0) >= 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {momentum}")
    if bias_weight_decay is not None:
        changes["bias_weight_decay"] = bias_weight_decay
    recipe = RECIPES[chosen]
    return replace(
        recipe, stage1=replace(recipe.stage1, **changes), stage3=replace(recipe.stage3, **changes)
    )


def frozen_description(optim: Optim) -> str:
    """What a stage with `optim` keeps fixed, in words ("" when nothing): from random weights
    these parts never learn, which is why such recipes are made for pretrained ones."""
    parts = []
    if optim.frozen_stages:
        parts.append(" and ".join(optim.frozen_stages) + " fixed")
    if optim.freeze_bn:
        parts.append("every BatchNorm at its initial statistics and affine parameters")
    return ", ".join(parts)


def _frozen_names(encoder: nn.Module, stages: tuple[str, ...]) -> set[str]:
    unknown = [s for s in stages if s not in STAGE_MODULES]
    if unknown:
        raise ConfigError(f"unknown frozen stages {unknown}; use {sorted(STAGE_MODULES)}")
    roots = {m for s in stages for m in STAGE_MODULES[s]}
    return {n for n, _ in encoder.named_parameters() if canonical(n).split(".")[0] in roots}


def freeze(model: nn.Module, encoder: nn.Module, optim: Optim) -> None:
    """Fix what `optim` freezes (`requires_grad` False), before the optimiser is built."""
    frozen = _frozen_names(encoder, optim.frozen_stages)
    for name, param in encoder.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    if optim.freeze_bn:
        for module in model.modules():
            if isinstance(module, BATCH_NORMS):
                module.requires_grad_(False)


def train_mode(model: nn.Module, encoder: nn.Module, optim: Optim) -> None:
    """`model.train()`, then BatchNorm back to eval where frozen (its running stats fixed)."""
    model.train()
    roots = {m for s in optim.frozen_stages for m in STAGE_MODULES.get(s, ())}
    for name, module in encoder.named_modules():
        if isinstance(module, BATCH_NORMS) and (canonical(name).split(".")[0] in roots):
            module.eval()
    if optim.freeze_bn:
        for module in model.modules():
            if isinstance(module, BATCH_NORMS):
                module.eval()


def param_groups(model: nn.Module, heads: list[nn.Module], optim: Optim) -> list[dict[str, object]]:
    """The optimiser's parameter groups (trainable parameters only), each with its lr and wd."""
    head_ids = {id(p) for h in heads for p in h.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not optim.grouped:
        params = [p for _, p in trainable]
        return [{"params": params, "lr": optim.lr, "weight_decay": optim.weight_decay}]
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in trainable:
        groups.setdefault((id(param) in head_ids, name.endswith(".bias")), []).append(param)
    out: list[dict[str, object]] = []
    for head in (False, True):
        for bias in (False, True):
            if (head, bias) not in groups:
                continue
            lr = optim.lr * (optim.head_lr_mult if head else 1.0)
            lr *= optim.bias_lr_mult if bias else 1.0
            wd = 0.0 if bias and not optim.bias_weight_decay else optim.weight_decay
            out.append({"params": groups[(head, bias)], "lr": lr, "weight_decay": wd})
    return out


def make_optimizer(
    model: nn.Module, heads: list[nn.Module], optim: Optim
) -> tuple[torch.optim.Optimizer, list[float]]:
    """The optimiser and each group's base learning rate (what the lr schedule scales)."""
    groups = param_groups(model, heads, optim)
    opt: torch.optim.Optimizer
    if optim.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)
    elif optim.optimizer == "sgd":
        opt = torch.optim.SGD(
            groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )
    else:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optim.optimizer!r}")
    return opt, [float(g["lr"]) for g in opt.param_groups]
