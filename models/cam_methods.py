"""The CAM methods by name: the functions that compute each, what it needs of the
classifier, where it reads, what it costs.

One registry for every door that names a method (`wsi-segment train --cam-method`, the
train flow, model.json validation) and for the code that runs one
(`models.cams.activation_maps`, `models.pseudo_masks`): a new method is its function in
`models.cams` and one entry here. The functions are held as `FunctionRef`s, so the registry
imports no torch and the CLI and the model.json check read it for free.

PCAM is not here: it is a pooling of the classifier (`--head pcam`), and any method below
but LFI-CAM makes pseudo masks from a PCAM classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wsi_segment.errors import ConfigError
from wsi_segment.lazy_exports import FunctionRef


@dataclass(frozen=True)
class CamMethod:
    """One method. `any_tap`: maps at every tapped depth (else the deepest only, the features
    its weights read); `head`: the classifier head it needs (None: any); `relu`: whether its
    maps are ReLU'd before the pseudo masks' joint min-max; `cost`: passes per patch;
    `per_class`: False for a class-agnostic map (the same for every class), which cannot
    make pseudo masks (heat maps only).

    `maps` computes its (N, K, H, W) maps: `(classifier, x, layer, *, normalise)` for a
    method read at any tap, `(classifier, x, *, normalise)` for one read at the deepest.
    `at_taps`, where the method has that form, gives its maps at several taps from one pass,
    `(classifier, x, layers, *, relu, normalise) -> [maps per tap]`, with `relu` as above:
    the pseudo masks use it instead of one `maps` call per tap."""

    name: str
    title: str
    any_tap: bool
    head: str | None
    relu: bool
    cost: str
    maps: FunctionRef
    per_class: bool = True
    at_taps: FunctionRef | None = None


def _cams(function: str) -> FunctionRef:
    """A function of `models.cams`, where the methods are computed (torch)."""
    return FunctionRef(f"wsi_segment.models.cams:{function}")


CAM_METHODS: dict[str, CamMethod] = {
    "gradcam": CamMethod(
        "gradcam",
        "Grad-CAM (Selvaraju et al. 2017), no ReLU as the official code",
        any_tap=True,
        head=None,
        relu=False,
        cost="1 forward + K backward passes per patch, all depths at once",
        maps=_cams("grad_cam"),
        at_taps=_cams("grad_cams"),
    ),
    "cam": CamMethod(
        "cam",
        "CAM (Zhou et al. 2016): ReLU of the head's class score maps",
        any_tap=False,
        head=None,
        relu=True,
        cost="1 forward pass per patch",
        maps=_cams("cam"),
    ),
    "scorecam": CamMethod(
        "scorecam",
        "Score-CAM (Wang et al. 2020): channels weighed by their increase of confidence",
        any_tap=True,
        head=None,
        relu=True,
        cost="1 forward pass per channel of every depth per patch",
        maps=_cams("score_cam"),
    ),
    "lficam": CamMethod(
        "lficam",
        "LFI-CAM (Lee et al. 2021): channels weighed by the head's feature-importance network",
        any_tap=False,
        head="lficam",
        relu=True,
        cost="1 forward pass per patch",
        maps=_cams("lfi_cam"),
    ),
    "scorecam-ref": CamMethod(
        "scorecam-ref",
        "Score-CAM as haofanwang/Score-CAM: softmax score of each masked input, no baseline",
        any_tap=True,
        head=None,
        relu=True,
        cost="1 forward pass per non-constant channel of every depth per patch",
        maps=_cams("score_cam_reference"),
    ),
    "lficam-ref": CamMethod(
        "lficam-ref",
        "LFI-CAM as TrustworthyAI-kr/LFI-CAM resnet_lfiv2: the head's class-agnostic map",
        any_tap=False,
        head="lficam-ref",
        relu=True,
        cost="1 forward pass per patch",
        maps=_cams("lfi_cam_reference"),
        per_class=False,
    ),
}
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


def pseudo_mask_methods() -> tuple[str, ...]:
    """The methods that can make pseudo masks (`--cam-method`): those with a map per class."""
    return tuple(name for name, spec in CAM_METHODS.items() if spec.per_class)


def any_tap_methods() -> tuple[str, ...]:
    """The methods whose maps can be asked of any tap (not only the deepest)."""
    return tuple(name for name, spec in CAM_METHODS.items() if spec.any_tap)


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
