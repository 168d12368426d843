"""Class activation maps for any `PatchClassifier` and any tapped layer.

Every method returns per-class maps (N, K, H, W) at input size. With `normalise="class"`
(default) each class map is min-max scaled to [0, 1]; `"none"` returns raw values (pseudo
masks normalise jointly over classes themselves).

Grad-CAM and ReLU: Selvaraju et al. apply ReLU to the weighted sum; the official
WSSS-Tissue code does not, and min-max normalises the signed map. We default to
`relu=True` for heat maps (negative evidence is not "where the class is"), and the pseudo
masks call it with `relu=False`, as the official code does, because joint min-max over
classes then keeps the ordering of negative values instead of flattening them to 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from wsi_segment.errors import ConfigError

from .cam_methods import any_tap_methods, cam_method
from .classifier import PatchClassifier
from .heads.lficam import LFICAMHead
from .heads.lficam_ref import LFICAMRefHead

_EPS = 1e-8


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode (BatchNorm statistics, no dropout/PDA), then restore the mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def minmax(maps: torch.Tensor, dims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """(maps - min) / (max - min) over `dims`; constant maps become 0."""
    lo = maps.amin(dim=dims, keepdim=True)
    hi = maps.amax(dim=dims, keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(_EPS)


def to_input_size(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of (N, K, h, w) maps to the input size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def _finish(maps: torch.Tensor, size: tuple[int, ...], normalise: str) -> torch.Tensor:
    maps = to_input_size(maps.float(), size)
    if normalise == "class":
        return minmax(maps)
    if normalise == "none":
        return maps
    raise ConfigError(f"normalise must be 'class' or 'none', got {normalise!r}")


def cam(classifier: PatchClassifier, x: torch.Tensor, *, normalise: str = "class") -> torch.Tensor:
    """CAM (Zhou et al.): relu(fc_k applied to the deepest features at every position)."""
    with eval_mode(classifier), torch.no_grad():
        maps = classifier.cam(x)
    return _finish(maps, x.shape[-2:], normalise)


def grad_cam(
    classifier: PatchClassifier,
    x: torch.Tensor,
    layer: str = "deep",
    *,
    relu: bool = True,
    normalise: str = "class",
) -> torch.Tensor:
    """Grad-CAM at a tapped layer: sum_c mean_ij(d logit_k / d A_c) * A_c, per class k.

    Gradients are of the logits (before the sigmoid), as in Selvaraju et al.
    """
    return grad_cams(classifier, x, (layer,), relu=relu, normalise=normalise)[0]


def grad_cams(
    classifier: PatchClassifier,
    x: torch.Tensor,
    layers: Sequence[str] = ("shallow", "mid", "deep"),
    *,
    relu: bool = True,
    normalise: str = "class",
) -> list[torch.Tensor]:
    """Grad-CAM at several taps from one forward and K backward passes (pseudo masks)."""
    taps_wanted = [classifier.resolve_tap(layer) for layer in layers]
    with eval_mode(classifier), torch.enable_grad():
        logits, taps = classifier.forward_taps(x)
        feats = [taps[t] for t in taps_wanted]
        maps: list[list[torch.Tensor]] = [[] for _ in feats]
        for k in range(logits.shape[1]):
            grads = torch.autograd.grad(logits[:, k].sum(), feats, retain_graph=True)
            for i, (f, g) in enumerate(zip(feats, grads, strict=True)):
                maps[i].append((g.mean(dim=(2, 3), keepdim=True) * f).sum(dim=1).detach())
    out = []
    for per_class in maps:
        m = torch.stack(per_class, dim=1)
        out.append(_finish(F.relu(m) if relu else m, x.shape[-2:], normalise))
    return out


def _masked_copy_scores(
    classifier: PatchClassifier,
    x: torch.Tensor,
    feats: torch.Tensor,
    batch_size: int,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """(N, C, K): `score(logits, up)` of x masked by each channel of `feats` in turn, where
    `up` (B, 1, H, W) is the channels upsampled to the input and the mask their min-max to
    [0, 1]. The Score-CAM forms differ only in `score`; masks are built `batch_size`
    channels at a time, so memory stays at batch_size input images."""
    size = tuple(x.shape[-2:])
    n, c = feats.shape[:2]
    alphas = []
    for i in range(n):
        scores = []
        for start in range(0, c, batch_size):
            up = to_input_size(feats[i : i + 1, start : start + batch_size], size)
            up = up.transpose(0, 1)  # (B, 1, H, W): one masked copy of x per channel
            scores.append(score(classifier(x[i : i + 1] * minmax(up)).float(), up))
        alphas.append(torch.cat(scores))  # (C, K)
    return torch.stack(alphas)


@torch.no_grad()
def score_cam(
    classifier: PatchClassifier,
    x: torch.Tensor,
    layer: str = "deep",
    *,
    batch_size: int = 64,
    normalise: str = "class",
) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): channel c weighs by its increase of confidence.

    alpha_kc = sigmoid(logit_k(x * mask_c)) - sigmoid(logit_k(0)); map_k = relu(sum_c
    alpha_kc A_c). The baseline 0 is what a mask of 0 leaves of x: a black image for our
    [0, 1] inputs (the mean colour only under mean/std normalisation). Sigmoid, not
    softmax, because the labels are multi-label.
    """
    tap = classifier.resolve_tap(layer)
    size = tuple(x.shape[-2:])
    with eval_mode(classifier):
        _, taps = classifier.forward_taps(x)
        feats = taps[tap].float()
        baseline = torch.sigmoid(classifier(torch.zeros_like(x[:1])).float())  # (1, K)
        alpha = _masked_copy_scores(
            classifier, x, feats, batch_size, lambda logits, _up: torch.sigmoid(logits) - baseline
        )
    out = F.relu(torch.einsum("nck,nchw->nkhw", alpha, feats))
    return _finish(out, size, normalise)


def _reference_score(logits: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The reference Score-CAM's alpha: softmax over classes, 0 for a constant channel."""
    varies = up.amax(dim=(2, 3)) > up.amin(dim=(2, 3))  # (B, 1)
    return torch.where(varies, torch.softmax(logits, dim=1), 0.0)


@torch.no_grad()
def score_cam_reference(
    classifier: PatchClassifier,
    x: torch.Tensor,
    layer: str = "deep",
    *,
    batch_size: int = 64,
    normalise: str = "class",
) -> torch.Tensor:
    """Score-CAM as the reference code (haofanwang/Score-CAM) computes it, for every class.

    alpha_kc = softmax(logits(x * mask_c))_k, no baseline; channels whose upsampled map is
    constant are skipped (alpha 0); map_k = relu(sum_c alpha_kc up(A_c)), the ReLU after
    upsampling. Softmax makes the classes compete, as in the reference's single-label
    setting; `score_cam` is the multi-label form with a baseline.
    """
    tap = classifier.resolve_tap(layer)
    size = tuple(x.shape[-2:])
    with eval_mode(classifier):
        _, taps = classifier.forward_taps(x)
        feats = taps[tap].float()
        alpha = _masked_copy_scores(classifier, x, feats, batch_size, _reference_score)
    summed = to_input_size(torch.einsum("nck,nchw->nkhw", alpha, feats), size)
    return _finish(F.relu(summed), size, normalise)


@torch.no_grad()
def lfi_cam(
    classifier: PatchClassifier, x: torch.Tensor, *, normalise: str = "class"
) -> torch.Tensor:
    """LFI-CAM from the trained feature-importance network (lficam head only)."""
    head = classifier.head
    if not isinstance(head, LFICAMHead):
        raise ConfigError(f"LFI-CAM needs a classifier with the lficam head, not {head.kind!r}")
    with eval_mode(classifier):
        taps = classifier.backbone(x)
        maps = head.lfi_maps(taps[classifier.tap_names[-1]], x)
    return _finish(maps, x.shape[-2:], normalise)


@torch.no_grad()
def lfi_cam_reference(
    classifier: PatchClassifier, x: torch.Tensor, *, normalise: str = "class"
) -> torch.Tensor:
    """The reference LFI-CAM map (lficam-ref head only): one class-agnostic map, the
    head's attention, given for every class (N, K, H, W)."""
    head = classifier.head
    if not isinstance(head, LFICAMRefHead):
        raise ConfigError(
            f"the reference LFI-CAM needs a classifier with the lficam-ref head, not {head.kind!r}"
        )
    with eval_mode(classifier):
        taps = classifier.backbone(x)
        att = head.attention(taps[classifier.tap_names[-1]], x)
    return _finish(att.expand(-1, head.num_classes, -1, -1), x.shape[-2:], normalise)


def activation_maps(
    method: str,
    classifier: PatchClassifier,
    x: torch.Tensor,
    layer: str = "deep",
    *,
    normalise: str = "class",
) -> torch.Tensor:
    """The maps of the method called `method` (`models.cam_methods.CAM_METHODS`, whose
    entry holds the function that computes them).

    Grad-CAM and Score-CAM work at any tap. CAM and LFI-CAM are defined by weights that
    read the deepest features (the fc layer; the importance network), so another `layer`
    is refused rather than silently answered from the deepest one.
    """
    spec = cam_method(method)
    if spec.any_tap:
        maps: torch.Tensor = spec.maps(classifier, x, layer, normalise=normalise)
        return maps
    if classifier.resolve_tap(layer) != classifier.tap_names[-1]:
        raise ConfigError(
            f"{method} is defined on the deepest features only (its weights read them); "
            f"for layer {layer!r} use {' or '.join(any_tap_methods())}, or ask {method} for "
            "'deep'"
        )
    deepest: torch.Tensor = spec.maps(classifier, x, normalise=normalise)
    return deepest
