"""Score-CAM computed the slow, obvious way (one forward pass per channel, one patch at a
time), the reference the batched `models.cams.score_cam` and the pseudo masks built on it
are checked against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsi_segment.models.classifier import PatchClassifier


def _upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def score_cam_loop(clf: PatchClassifier, x: torch.Tensor, tap: str) -> torch.Tensor:
    """Raw Score-CAM maps (N, K, H, W) at the tap named `tap`: channel c masks the patch by
    its upsampled, min-max scaled map; its weight is the rise of each class's sigmoid over a
    black patch; the map is relu(sum_c weight * A_c), upsampled."""
    size = tuple(x.shape[-2:])
    feats = clf.forward_taps(x)[1][tap]
    base = torch.sigmoid(clf(torch.zeros_like(x[:1])))[0]  # black: what a mask of 0 leaves
    out = []
    for i in range(x.shape[0]):
        acc = torch.zeros(base.shape[0], *feats.shape[-2:])
        for c in range(feats.shape[1]):
            up = _upsample(feats[i : i + 1, c : c + 1], size)[0, 0]
            mask = (up - up.min()) / (up.max() - up.min()).clamp_min(1e-8)
            alpha = torch.sigmoid(clf(x[i : i + 1] * mask))[0] - base
            acc += alpha[:, None, None] * feats[i, c]
        out.append(_upsample(F.relu(acc)[None], size)[0])
    return torch.stack(out)
