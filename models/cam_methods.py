"""The CAM methods by name: what each needs of the classifier, where it reads, what it costs.

One registry for every door that names a method (`wsi-segment train --cam-method`, the
train flow, `models.cams.activation_maps`, `models.pseudo_masks`, model.json validation).
It imports no torch, so the CLI and the model.json check read it for free.

PCAM is not here: it is a pooling of the classifier (`--head pcam`), and any method below
but LFI-CAM makes pseudo masks from a PCAM classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wsi_segment.errors import ConfigError


@dataclass(frozen=True)
class CamMethod:
    """One method. `any_tap`: maps at every tapped depth (else the deepest only, the features
    its weights read); `head`: the classifier head it needs (None: any); `relu`: whether its
    maps are ReLU'd before the pseudo masks' joint min-max; `cost`: passes per patch;
    `per_class`: False for a class-agnostic map (the same for every class), which cannot
    make pseudo masks (heat maps only)."""

    name: str
    title: str
    any_tap: bool
    head: str | None
    relu: bool
    cost: str
    per_class: bool = True


CAM_METHODS: dict[str, CamMethod] = {
    "gradcam": CamMethod(
        "gradcam",
        "Grad-CAM (Selvaraju et al. 2017), no ReLU as the official code",
        any_tap=True,
        head=None,
        relu=False,
        cost="1 forward + K backward passes per patch, all depths at once",
    ),
    "cam": CamMethod(
        "cam",
        "CAM (Zhou et al. 2016): ReLU of the head's class score maps",
        any_tap=False,
        head=None,
        relu=True,
        cost="1 forward pass per patch",
    ),
    "scorecam": CamMethod(
        "scorecam",
        "Score-CAM (Wang et al. 2020): channels weighed by their increase of confidence",
        any_tap=True,
        head=None,
        relu=True,
        cost="1 forward pass per channel of every depth per patch",
    ),
    "lficam": CamMethod(
        "lficam",
        "LFI-CAM (Lee et al. 2021): channels weighed by the head's feature-importance network",
        any_tap=False,
        head="lficam",
        relu=True,
        cost="1 forward pass per patch",
    ),
    "scorecam-ref": CamMethod(
        "scorecam-ref",
        "Score-CAM as haofanwang/Score-CAM: softmax score of each masked input, no baseline",
        any_tap=True,
        head=None,
        relu=True,
        cost="1 forward pass per non-constant channel of every depth per patch",
    ),
    "lficam-ref": CamMethod(
        "lficam-ref",
        "LFI-CAM as TrustworthyAI-kr/LFI-CAM resnet_lfiv2: the head's class-agnostic map",
        any_tap=False,
        head="lficam-ref",
        relu=True,
        cost="1 forward pass per patch",
        per_class=False,
    ),
}
#: The methods that can make pseudo masks (`--cam-method`): those with a map per class.
PSEUDO_MASK_METHODS = tuple(name for name, spec in CAM_METHODS.items() if spec.per_class)
DEFAULT_CAM_METHOD = "gradcam"
# What every model.json written before the method was recorded used for its pseudo masks.
DEFAULT_LAYERS = ("shallow", "mid", "deep")
LEGACY_RECORD: dict[str, Any] = {
    "method": DEFAULT_CAM_METHOD,
    "layers": list(DEFAULT_LAYERS),
    "taps": ["layer2", "layer3", "layer4"],
    "relu": False,
}


def cam_method(name: str) -> CamMethod:
    """The method called `name`, or one ConfigError listing the choices."""
    if name not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method {name!r}; choose one of {list(CAM_METHODS)}")
    return CAM_METHODS[name]


def check_head(method: str, head: str) -> None:
    """Refuse a method the classifier head cannot give (before any training)."""
    need = cam_method(method).head
    if need is not None and head != need:
        raise ConfigError(
            f"--cam-method {method} needs --head {need}, not --head {head} (its maps come "
            f"from that head's weights); add --head {need}, or pick another --cam-method "
            f"({', '.join(m for m, s in CAM_METHODS.items() if s.head is None)} work with any head)"
        )


def pseudo_mask_record(
    method: str, layers: Sequence[str], taps: Sequence[str], background: bool
) -> dict[str, Any]:
    """How pseudo masks were made, as model.json's `provenance.pseudo_masks` holds it.

    `layers` names the mask folders (shallow to deep), `taps` the backbone stage each mask's
    maps came from (the deepest for every mask with CAM and LFI-CAM)."""
    spec = cam_method(method)
    return {
        "method": spec.name,
        "layers": list(layers),
        "taps": list(taps),
        "relu": spec.relu,
        "background": background,
    }


def recorded_method(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """`provenance.pseudo_masks` of a model.json, or Grad-CAM at three depths for a model
    trained before the method was recorded (the only method stage 2 used then)."""
    record = (provenance or {}).get("pseudo_masks")
    return dict(record) if isinstance(record, dict) else dict(LEGACY_RECORD)
