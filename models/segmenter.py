"""DeepLabV3+ (segmentation-models-pytorch) and the multi-layer pseudo-supervision loss.

The segmenter is trained on three pseudo masks (from Grad-CAM at three depths): the
shallow masks are finer but noisier, the deep one coarser but more reliable, so the loss
is a weighted sum of one cross-entropy per mask (0.2, 0.2, 0.6, as in the paper). Two
scalings of it (`SEG_LOSSES`): ours averages over labelled pixels; the official code's
averages over all pixels with background as a fixed extra class, divided by the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from wsi_segment.address_space import ran_out
from wsi_segment.errors import ConfigError

IGNORE_INDEX = 255
DEFAULT_LAYER_WEIGHTS = (0.2, 0.2, 0.6)
#: ASPP dilation rates by encoder output stride, as DeepLabV3+ (Chen et al. 2018) prescribes
#: and the official WSSS-Tissue code uses at 16: the rates double when the stride halves, so
#: each branch sees the same image extent.
ATROUS_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}
#: The rates of a segmenter whose model.json records none: smp's default, which every model
#: saved before the rates were recorded was built with (at output stride 16 too).
LEGACY_ATROUS_RATES = (12, 24, 36)


class Segmenter(nn.Module):
    """smp.DeepLabV3Plus with `encoder_weights=None`; forward(x) -> logits (N, K, H, W).

    Encoder by smp name: resnet18/34/50 (smp's own) or any timm model as `tu-<name>`
    (e.g. tu-resnet10t). Inputs must have H and W divisible by 16 (by `output_stride`).
    `atrous_rates` are the ASPP's three dilations; None takes `ATROUS_RATES[output_stride]`
    (smp's own default, (12, 24, 36), is the stride-8 set: at stride 16 a 224 px tile's
    14 x 14 map leaves its 18-36 dilations reading only padding).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        num_classes: int = 4,
        *,
        output_stride: int = 16,
        decoder_channels: int = 256,
        atrous_rates: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ConfigError(f"segmenter output_stride must be 8 or 16, got {output_stride}")
        rates = ATROUS_RATES[output_stride] if atrous_rates is None else tuple(atrous_rates)
        if len(rates) != 3 or not all(isinstance(r, int) and r >= 1 for r in rates):
            raise ConfigError(f"segmenter atrous_rates must be 3 positive integers, got {rates}")
        if not encoder_known(encoder):
            raise ConfigError(
                f"unknown segmenter encoder {encoder!r}; use e.g. resnet18, resnet34, resnet50 "
                "or tu-<timm name>"
            )
        try:
            self.net = smp.DeepLabV3Plus(
                encoder_name=encoder,
                encoder_weights=None,
                encoder_output_stride=output_stride,
                decoder_channels=decoder_channels,
                decoder_atrous_rates=rates,
                classes=num_classes,
            )
        except (KeyError, ValueError, RuntimeError) as exc:  # a known encoder it cannot use
            if ran_out(exc):  # out of memory is not a wrong encoder (`memory_named` says it)
                raise
            raise ConfigError(
                f"a DeepLabV3+ cannot be built on encoder {encoder!r} at output stride "
                f"{output_stride} ({exc}); use e.g. resnet18, resnet34 or resnet50"
            ) from exc
        self.encoder = encoder
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.decoder_channels = decoder_channels
        self.atrous_rates: tuple[int, ...] = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x)
        return logits

    def config(self) -> dict[str, Any]:
        """Architecture stored in model.json; `Segmenter.from_config(config, K)` rebuilds it."""
        return {
            "encoder": self.encoder,
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
            "decoder_channels": self.decoder_channels,
            "atrous_rates": list(self.atrous_rates),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], num_classes: int) -> Segmenter:
        """The segmenter model.json's `architecture.segmenter` describes; one without
        `atrous_rates` was saved before they were recorded, so it gets the rates it was
        built with, `LEGACY_ATROUS_RATES`, and gives the same outputs as before."""
        args = {key: v for key, v in config.items() if key != "num_classes"}
        args.setdefault("atrous_rates", LEGACY_ATROUS_RATES)
        return cls(num_classes=num_classes, **args)


def encoder_known(encoder: str) -> bool:
    """Whether smp knows `encoder` by name, or timm for a `tu-` one: asked of their lists,
    not read from a failed build (a build that ran out of memory is not a wrong name)."""
    if encoder.startswith("tu-"):
        import timm

        return bool(timm.is_model(encoder[3:]))
    return encoder in smp.encoders.get_encoder_names()


def build_segmenter(encoder: str = "resnet18", num_classes: int = 4, **kwargs: Any) -> Segmenter:
    """Build a DeepLabV3+ by encoder name (never downloads weights)."""
    return Segmenter(encoder, num_classes, **kwargs)


def multilayer_pseudo_loss(
    logits: torch.Tensor,
    masks: Sequence[torch.Tensor],
    weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """sum_i weights[i] * CE(logits, masks[i]), each CE averaged over non-ignored pixels.

    A mask with no labelled pixel contributes 0 (not NaN), so an all-background patch
    does not poison the batch.
    """
    if len(masks) != len(weights):
        raise ConfigError(f"{len(masks)} pseudo masks but {len(weights)} loss weights")
    total = logits.new_zeros(())
    for mask, weight in zip(masks, weights, strict=True):
        target = mask.long()
        if bool((target != ignore_index).any()):
            total = total + weight * F.cross_entropy(logits, target, ignore_index=ignore_index)
        else:
            total = total + 0.0 * logits.sum()
    return total


#: The official code's fixed logit of the extra background class on background pixels.
OFFICIAL_BACKGROUND_LOGIT = 100.0


def official_pseudo_loss(
    logits: torch.Tensor,
    masks: Sequence[torch.Tensor],
    weights: Sequence[float] = DEFAULT_LAYER_WEIGHTS,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The official stage-3 loss: sum_i weights[i] * CE_i / N.

    A fifth logit is appended, 100 on background pixels (those `ignore_index` marks in the
    last, deepest mask) and 0 elsewhere; background pixels are that class in every mask. Each
    CE averages over all N*H*W pixels (background included, where it is ~0), and is divided
    again by the batch size N, as the official code's `batch_average`.
    """
    if len(masks) != len(weights):
        raise ConfigError(f"{len(masks)} pseudo masks but {len(weights)} loss weights")
    n, k = logits.shape[:2]
    background = masks[-1] == ignore_index
    extra = (OFFICIAL_BACKGROUND_LOGIT * background).to(logits.dtype).unsqueeze(1)
    full = torch.cat([logits, extra], dim=1)
    total = logits.new_zeros(())
    for mask, weight in zip(masks, weights, strict=True):
        target = mask.long().masked_fill(mask == ignore_index, k)
        total = total + weight * F.cross_entropy(full, target) / n
    return total


PseudoLoss = Callable[[torch.Tensor, Sequence[torch.Tensor], Sequence[float]], torch.Tensor]
#: Stage-3 loss by name (`--seg-loss`).
SEG_LOSSES: dict[str, PseudoLoss] = {
    "ours": multilayer_pseudo_loss,
    "official": official_pseudo_loss,
}
