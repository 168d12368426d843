"""Multi-layer pseudo masks: one label map per backbone depth from a trained classifier.

Per depth: the maps of a CAM method (`models.cam_methods`; default Grad-CAM without ReLU,
as the official code) for every class, upsampled to the patch; classes absent from the
patch label are excluded; present classes are min-max normalised jointly (so their relative
strength survives); LUAD-style background (white glass) beats every class; argmax gives
the label.

The min-max runs over the present classes only, and absent classes never take part in the
argmax. The official code normalises over all classes' maps, absent ones included, then
zeroes the absent ones: a present class at the minimum then ties with an absent class at 0
and argmax picks the lower index, which can label a pixel with a class the patch does not
have. Ours cannot. Background and patches without any
label get `ignore_index` (default 255): the segmenter's loss skips them, because white
glass is not a tissue class and its pixels carry no supervision.

Methods whose maps are ReLU'd (CAM, Score-CAM, LFI-CAM: `CamMethod.relu`) score 0 wherever a
class has no evidence, often over much of a patch. Where every present class of a patch with
two or more scores 0, argmax would break the tie towards the lowest class index (all such
pixels to LYM, say); those pixels get `ignore_index` instead, as there is nothing to tell the
classes apart. A patch with one present class keeps it on all its tissue, as the official
code does. Grad-CAM without ReLU (the default) keeps the order of its negative values and is
labelled by argmax everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wsi_segment.errors import ConfigError

from .background import GREY_THRESHOLD, MIN_OBJECT_SIZE, background_mask
from .cam_methods import DEFAULT_CAM_METHOD, DEFAULT_LAYERS, cam_method
from .cams import activation_maps
from .classifier import PatchClassifier
from .segmenter import IGNORE_INDEX

_EPS = 1e-8


def joint_minmax(maps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Min-max over the present classes and all positions of each sample; absent -> 0.

    maps (N, K, H, W), present bool (N, K). Output in [0, 1].
    """
    sel = present[:, :, None, None]
    big = torch.finfo(maps.dtype).max
    lo = torch.where(sel, maps, big).amin(dim=(1, 2, 3), keepdim=True)
    hi = torch.where(sel, maps, -big).amax(dim=(1, 2, 3), keepdim=True)
    scaled = (maps - lo) / (hi - lo).clamp_min(_EPS)
    return torch.where(sel, scaled, torch.zeros_like(maps))


def label_from_maps(
    maps: torch.Tensor,
    present: torch.Tensor,
    background: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """uint8 (N, H, W): argmax over present classes of the jointly normalised maps.

    `background` (bool (N, H, W)) wins over every class and becomes `ignore_index`, as do
    all pixels of a patch with no present class. Absent classes can never be chosen.
    `relu`: the maps were ReLU'd, so a score <= 0 is no evidence; where a patch has two or
    more present classes and none of them has evidence, the pixel is `ignore_index` too.
    """
    sel = present[:, :, None, None]
    scores = joint_minmax(maps.float(), present)
    scores = torch.where(sel, scores, torch.full_like(scores, -1.0))
    label = scores.argmax(dim=1).to(torch.uint8)
    drop = ~present.any(dim=1)[:, None, None].expand_as(label)
    if background is not None:
        drop = drop | background
    if relu:
        no_evidence = torch.where(sel, maps <= 0, True).all(dim=1)
        several = (present.sum(dim=1) >= 2)[:, None, None]
        drop = drop | (no_evidence & several)
    return torch.where(drop, torch.full_like(label, ignore_index), label)


def mask_taps(classifier: PatchClassifier, method: str, layers: Sequence[str]) -> list[str]:
    """The backbone tap each mask's maps come from: the layer's own, or the deepest for
    methods whose weights read only the deepest features (CAM, LFI-CAM)."""
    if cam_method(method).any_tap:
        return [classifier.resolve_tap(layer) for layer in layers]
    return [classifier.tap_names[-1]] * len(layers)


def pseudo_masks(
    classifier: PatchClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    layers: Sequence[str] = DEFAULT_LAYERS,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    use_background: bool = True,
    grey_threshold: int = GREY_THRESHOLD,
    min_object_size: int = MIN_OBJECT_SIZE,
    ignore_index: int = IGNORE_INDEX,
    method: str = DEFAULT_CAM_METHOD,
) -> list[torch.Tensor]:
    """One uint8 mask (N, H, W) per layer, shallow to deep.

    images: uint8 (N, 3, H, W) RGB patches; labels: (N, K) 0/1 patch-level labels.
    `mean`/`std` are the classifier's input normalisation (on [0, 1] inputs). Set
    `use_background=False` for datasets where white is tissue (BCSS-WSSS). `method` may
    also be scorecam (per layer) or cam / lficam (deepest tap only: every mask the same).
    """
    spec = cam_method(method)
    if not spec.per_class:
        raise ConfigError(f"{method} gives one class-agnostic map: no pseudo masks from it")
    if images.dtype != torch.uint8:
        raise TypeError("pseudo_masks expects uint8 RGB patches (N, 3, H, W)")
    device = next(classifier.parameters()).device
    images = images.to(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    x = (images.float() / 255.0 - m) / s
    present = labels.to(device) > 0.5
    bg = background_mask(images, grey_threshold, min_object_size) if use_background else None
    if spec.at_taps is not None:  # every depth from one pass
        maps = spec.at_taps(classifier, x, layers, relu=spec.relu, normalise="none")
    elif not spec.any_tap:  # deepest features only: one map for every depth
        maps = [activation_maps(method, classifier, x, "deep", normalise="none")] * len(layers)
    else:
        maps = [activation_maps(method, classifier, x, lay, normalise="none") for lay in layers]
    return [label_from_maps(m, present, bg, ignore_index, relu=spec.relu).cpu() for m in maps]
