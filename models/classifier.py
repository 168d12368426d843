"""The patch classifier: a tapped backbone plus one head, behind one interface.

`forward(x)` gives multi-label logits (N, K); `forward_taps(x)` also returns every tapped
feature map (still on the autograd graph, so Grad-CAM can differentiate the logits with
respect to any of them); `cam(x)` gives the head's class activation maps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backbone import DEFAULT_TAPS, Backbone, TapBackbone, resolve_tap
from .heads import ClassifierHead, build_head


class PatchClassifier(nn.Module):
    """Backbone (dict of tapped maps) + head reading the deepest tap."""

    def __init__(self, backbone: TapBackbone, head: ClassifierHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self.backbone.tap_names)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def resolve_tap(self, tap: str) -> str:
        """A tap name, or shallow / mid / deep for the last three taps."""
        return resolve_tap(self.tap_names, tap)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N, K) and {tap: feature map}; the head reads the deepest tap."""
        taps = self.backbone(x)
        return self.head(taps[self.tap_names[-1]], x), taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[0]

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps (N, K, h, w) at the deepest tap (relu'd, unnormalised)."""
        taps = self.backbone(x)
        return self.head.cam(taps[self.tap_names[-1]], x)

    def config(self) -> dict[str, Any]:
        """Architecture stored in model.json; `build_classifier(**config)` rebuilds it."""
        if not isinstance(self.backbone, Backbone):
            raise TypeError("only classifiers with a models.backbone.Backbone can be described")
        return {
            "backbone": self.backbone.config(),
            "head": {"kind": self.head.kind, **self.head.config()},
            "num_classes": self.num_classes,
        }


def build_classifier(
    backbone: str | dict[str, Any] = "resnet18",
    head: str | dict[str, Any] = "pda",
    num_classes: int = 4,
    *,
    taps: tuple[str, ...] = DEFAULT_TAPS,
    output_stride: int = 16,
) -> PatchClassifier:
    """Build a classifier by names, or from the dicts `PatchClassifier.config()` wrote.

    `backbone` is a timm ResNet name (resnet18, resnet10t, resnet50, wide_resnet50_2) or
    {"name", "taps", "output_stride"}; `head` is cam | pda | pcam | lficam or
    {"kind": ..., **head options}.
    """
    if isinstance(backbone, str):
        backbone = {"name": backbone, "taps": list(taps), "output_stride": output_stride}
    if isinstance(head, str):
        head = {"kind": head}
    bb = Backbone(
        backbone["name"],
        taps=tuple(backbone.get("taps", DEFAULT_TAPS)),
        output_stride=int(backbone.get("output_stride", 16)),
    )
    options = {k: v for k, v in head.items() if k != "kind"}
    return PatchClassifier(
        bb, build_head(head["kind"], bb.channels[bb.deepest], num_classes, **options)
    )
