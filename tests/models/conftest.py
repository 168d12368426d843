"""Shared fixtures for models tests: one thread, deterministic, tiny networks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.heads import build_head

torch.set_num_threads(1)


class TinyBackbone(nn.Module):
    """Three conv stages (4, 6, 8 channels; strides 2, 2, 1): a real, very small tapped net."""

    tap_names = ("a", "b", "c")

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.channels = {"a": 4, "b": 6, "c": 8}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.a(x)
        b = self.b(a)
        return {"a": a, "b": b, "c": self.c(b)}


@pytest.fixture
def tiny_classifier() -> Callable[..., PatchClassifier]:
    """Factory: a PatchClassifier over TinyBackbone with the named head (eval mode)."""

    def make(head: str = "cam", num_classes: int = 3) -> PatchClassifier:
        return PatchClassifier(TinyBackbone(), build_head(head, 8, num_classes)).eval()

    return make


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
