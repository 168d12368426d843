"""PDA head: Progressive Dropout Attention (Han et al. 2022) over a CAM classifier.

In training, once the schedule is active, each class map M_k = relu(fc_k * m) loses every
position above beta_k = mu * max(M_k); the attention A = mean_k(dropped M_k) multiplies the
features before pooling. Dropping the most discriminative positions pushes the classifier
to use the rest of the tissue, so CAMs cover whole regions. Inference uses plain features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from wsi_segment.errors import ConfigError

from .base import DEFAULT_DROPOUT, ClassifierHead

# Named schedules: the paper's (default, see docs/models.md) and the official code's.
PDA_SCHEDULES = ("paper", "official")


@dataclass
class PDASchedule:
    """mu per epoch; the trainer calls `step()` once at the end of every epoch.

    Default (the paper's): PDA off for `warmup_epochs`, then mu = max(floor,
    mu0 * sigma ** (epoch - warmup_epochs)), sigma 0.985, floor 0.65. `official()` gives the
    official code's schedule: sigma 0.98 and mu decaying from epoch 0 (also during warm-up).
    """

    mu0: float = 1.0
    warmup_epochs: int = 3
    sigma: float = 0.985
    floor: float = 0.65
    decay_during_warmup: bool = False
    epoch: int = 0

    def __post_init__(self) -> None:
        if not (0.0 < self.floor <= self.mu0 <= 1.0 and 0.0 < self.sigma <= 1.0):
            raise ConfigError(
                f"PDA schedule needs 0 < floor <= mu0 <= 1 and 0 < sigma <= 1, got {self}"
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"PDA warmup_epochs must be >= 0, got {self.warmup_epochs}")

    @classmethod
    def official(cls) -> PDASchedule:
        """The schedule of ChuHan89/WSSS-Tissue (sigma 0.98, decays during warm-up)."""
        return cls(sigma=0.98, decay_during_warmup=True)

    @classmethod
    def preset(
        cls,
        name: str = "paper",
        *,
        sigma: float | None = None,
        floor: float | None = None,
        warmup_epochs: int | None = None,
    ) -> PDASchedule:
        """A named schedule (`PDA_SCHEDULES`) with any of sigma, floor, warm-up replaced."""
        if name not in PDA_SCHEDULES:
            raise ConfigError(f"unknown PDA schedule {name!r}; choose one of {PDA_SCHEDULES}")
        base = cls() if name == "paper" else cls.official()
        return replace(
            base,
            sigma=base.sigma if sigma is None else sigma,
            floor=base.floor if floor is None else floor,
            warmup_epochs=base.warmup_epochs if warmup_epochs is None else warmup_epochs,
        )

    def mu_at(self, epoch: int) -> float:
        """mu used during `epoch` (0-based)."""
        steps = epoch if self.decay_during_warmup else max(0, epoch - self.warmup_epochs)
        return max(self.floor, self.mu0 * self.sigma**steps)

    def active_at(self, epoch: int) -> bool:
        """Whether PDA is applied during `epoch`."""
        return epoch >= self.warmup_epochs

    @property
    def mu(self) -> float:
        return self.mu_at(self.epoch)

    @property
    def active(self) -> bool:
        return self.active_at(self.epoch)

    def step(self) -> None:
        """Advance one epoch."""
        self.epoch += 1


def pda_attention(feats: torch.Tensor, weight: torch.Tensor, mu: float) -> torch.Tensor:
    """Attention (N, 1, h, w) = mean over the K classes of relu(class map), zeroed above mu * max.

    Divides by K (the official code divides by a hard-coded 4). Not detached, as there.
    """
    maps = F.relu(F.conv2d(feats, weight))
    beta = mu * maps.amax(dim=(2, 3), keepdim=True)
    dropped = torch.where(maps > beta, torch.zeros_like(maps), maps)
    return dropped.mean(dim=1, keepdim=True)


class PDAHead(ClassifierHead):
    """CAM head whose training forward applies PDA when `schedule.active`."""

    kind = "pda"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        dropout: float = DEFAULT_DROPOUT,
        schedule: PDASchedule | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, bias=False, dropout=dropout)
        self.schedule = schedule if schedule is not None else PDASchedule()

    def forward(self, feats: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.schedule.active:
            feats = feats * pda_attention(feats, self.fc.weight, self.schedule.mu)
        return self.classify(self.dropout(feats).mean(dim=(2, 3)))

    def config(self) -> dict[str, Any]:
        s = self.schedule
        return {
            "dropout": self.dropout_p,
            "schedule": {
                "mu0": s.mu0,
                "warmup_epochs": s.warmup_epochs,
                "sigma": s.sigma,
                "floor": s.floor,
                "decay_during_warmup": s.decay_during_warmup,
            },
        }
