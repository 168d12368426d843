"""ResNet-family backbones (timm) that return the feature maps of several depths.

The method needs feature maps at three depths: Grad-CAM on each gives one pseudo mask
(the paper's b4_5, b5_2, bn7 of ResNet-38; for a ResNet, the last three stages), and the
deepest one feeds the classifier head. Encoders are always built with
`pretrained=False`: nothing is downloaded at run time.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import timm
import torch
from timm.models import FeatureInfo
from torch import nn

from wsi_segment.address_space import ran_out
from wsi_segment.errors import ConfigError

#: Backbones we document and test. Any timm ResNet with `layer1..layer4` also works.
KNOWN_BACKBONES: dict[str, str] = {
    "resnet10t": "tiny, for tests",
    "resnet18": "small, for tests and the demo model",
    "resnet34": "medium",
    "resnet50": "real training",
    "wide_resnet50_2": "real training; the ResNet-38-like option (wide, ~66M parameters)",
}

#: Aliases for the last three taps, counted from the deepest.
TAP_ALIASES = {"shallow": -3, "mid": -2, "deep": -1, "deepest": -1}

DEFAULT_TAPS = ("layer2", "layer3", "layer4")


class TapBackbone(Protocol):
    """What a classifier reads of its backbone (a `Backbone`, or a test's small module)."""

    tap_names: tuple[str, ...]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Backbone(nn.Module):
    """A timm ResNet cut into stages; `forward` returns {tap name: feature map}, shallow first.

    `output_stride` 16 (default) keeps 224 px tiles at 14 x 14 for the deepest maps, a
    compromise between CAM resolution (the paper uses stride 8) and CPU cost (stride 8
    makes layer3/layer4 4x/16x dearer).
    """

    def __init__(
        self,
        name: str = "resnet18",
        taps: tuple[str, ...] = DEFAULT_TAPS,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"backbone output_stride must be 8, 16 or 32, got {output_stride}")
        indices = tuple(_stage_index(t) for t in taps)
        if list(indices) != sorted(set(indices)):
            raise ConfigError(f"backbone taps must be distinct and shallow to deep, got {taps}")
        try:
            self.body = timm.create_model(
                name,
                pretrained=False,
                features_only=True,
                out_indices=indices,
                output_stride=output_stride,
            )
        except (RuntimeError, ValueError, TypeError) as exc:
            if ran_out(exc):  # out of memory is not a wrong name (`memory_named` says it)
                raise
            raise ConfigError(
                f"unknown or unsupported backbone {name!r} ({exc}); use one of {sorted(KNOWN_BACKBONES)}"
            ) from exc
        info = cast(FeatureInfo, self.body.feature_info)  # features_only=True models carry it
        names = tuple(info.module_name())
        if names != tuple(taps):
            raise ConfigError(f"backbone {name!r} has stages {names}, expected {tuple(taps)}")
        self.name = name
        self.tap_names: tuple[str, ...] = tuple(taps)
        self.output_stride = output_stride
        self.channels: dict[str, int] = dict(zip(self.tap_names, info.channels(), strict=True))

    @property
    def deepest(self) -> str:
        """Name of the deepest tap (the one the classifier head reads)."""
        return self.tap_names[-1]

    def resolve_tap(self, tap: str) -> str:
        """Map a tap name or an alias (shallow, mid, deep, deepest) to the tap name."""
        return resolve_tap(self.tap_names, tap)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.tap_names, self.body(x), strict=True))

    def config(self) -> dict[str, Any]:
        """The arguments that rebuild this backbone (stored in model.json)."""
        return {
            "name": self.name,
            "taps": list(self.tap_names),
            "output_stride": self.output_stride,
        }


def resolve_tap(tap_names: tuple[str, ...], tap: str) -> str:
    """A tap name, or an alias: shallow/mid/deep = third-last/second-last/last tap."""
    if tap in tap_names:
        return tap
    if tap in TAP_ALIASES:
        return tap_names[max(-len(tap_names), TAP_ALIASES[tap])]
    raise ConfigError(f"unknown layer {tap!r}; this classifier taps {list(tap_names)}")


def _stage_index(tap: str) -> int:
    if tap.startswith("layer") and tap[5:].isdigit() and 1 <= int(tap[5:]) <= 4:
        return int(tap[5:])
    raise ConfigError(f"backbone taps are ResNet stages layer1..layer4, got {tap!r}")
