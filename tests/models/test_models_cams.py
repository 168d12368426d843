"""CAM methods against analytic answers, and batched Score-CAM against a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.models.reference_cams import score_cam_loop
from wsi_segment.errors import ConfigError
from wsi_segment.models.cams import (
    activation_maps,
    cam,
    grad_cam,
    grad_cams,
    lfi_cam,
    minmax,
    score_cam,
    score_cam_reference,
)
from wsi_segment.models.classifier import build_classifier


def _upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("kind", ["cam", "pda"])
def test_grad_cam_on_linear_head_equals_analytic_map(kind: str) -> None:
    # logit_k = mean_ij sum_c W_kc A_cij, so d logit_k / d A_cij = W_kc / (h w) everywhere:
    # Grad-CAM_k = sum_c W_kc / (h w) * A_c = class score map / (h w).
    clf = build_classifier("resnet10t", kind, 3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = clf.backbone(x)["layer4"]
    h, w = feats.shape[-2:]
    analytic = _upsample(F.conv2d(feats, clf.head.fc.weight) / (h * w), 64)
    got = grad_cam(clf, x, "deep", relu=False, normalise="none")
    torch.testing.assert_close(got, analytic, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        grad_cam(clf, x, relu=True, normalise="none"), analytic.clamp_min(0), rtol=1e-4, atol=1e-6
    )
    # Normalised: per-class min-max of the same map.
    torch.testing.assert_close(grad_cam(clf, x, relu=False), minmax(analytic), rtol=1e-4, atol=1e-5)


def test_grad_cam_any_tap_and_mode_restored() -> None:
    clf = build_classifier("resnet10t", "cam", 2)
    clf.train()
    x = torch.rand(2, 3, 64, 64)
    for layer in ("shallow", "mid", "layer4"):
        maps = grad_cam(clf, x, layer)
        assert maps.shape == (2, 2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    assert clf.training
    with pytest.raises(ConfigError, match="unknown layer"):
        grad_cam(clf, x, "layer9")


def test_cam_is_normalised_relu_class_map() -> None:
    clf = build_classifier("resnet10t", "cam", 3).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = minmax(
            _upsample(F.relu(F.conv2d(clf.backbone(x)["layer4"], clf.head.fc.weight)), 64)
        )
    torch.testing.assert_close(cam(clf, x), expected)
    torch.testing.assert_close(activation_maps("cam", clf, x), expected)


def test_score_cam_batched_equals_naive_loop(tiny_classifier) -> None:
    clf = tiny_classifier("cam", 3)
    x = torch.rand(2, 3, 32, 32)
    for layer in ("a", "c"):
        batched = score_cam(clf, x, layer, batch_size=3, normalise="none")
        torch.testing.assert_close(batched, score_cam_loop(clf, x, layer), rtol=1e-5, atol=1e-6)
    assert score_cam(clf, x, "b").max() <= 1


def test_lfi_cam_needs_lficam_head() -> None:
    x = torch.rand(1, 3, 64, 64)
    maps = lfi_cam(build_classifier("resnet10t", "lficam", 2), x)
    assert maps.shape == (1, 2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(ConfigError, match="lficam head"):
        lfi_cam(build_classifier("resnet10t", "cam", 2), x)
    with pytest.raises(ConfigError, match="unknown CAM method"):
        activation_maps("gradcam++", build_classifier("resnet10t", "cam", 2), x)


def test_cam_and_lfi_cam_refuse_a_layer_their_weights_do_not_read() -> None:
    x = torch.rand(1, 3, 64, 64)
    for method, head in (("cam", "cam"), ("lficam", "lficam")):
        clf = build_classifier("resnet10t", head, 2).eval()
        deep = activation_maps(method, clf, x, clf.tap_names[-1])
        torch.testing.assert_close(activation_maps(method, clf, x, "deep"), deep)
        for layer in ("shallow", "mid"):
            with pytest.raises(ConfigError, match=f"{method} is defined on the deepest"):
                activation_maps(method, clf, x, layer)
        assert activation_maps("gradcam", clf, x, "mid").shape == deep.shape  # any tap


def test_grad_cams_several_layers_equal_single_layer_calls() -> None:
    clf = build_classifier("resnet10t", "pcam", 3).eval()
    x = torch.rand(2, 3, 64, 64)
    together = grad_cams(clf, x, ("shallow", "mid", "deep"), relu=False, normalise="none")
    for layer, maps in zip(("shallow", "mid", "deep"), together, strict=True):
        torch.testing.assert_close(maps, grad_cam(clf, x, layer, relu=False, normalise="none"))


def _reference_score_cam(clf, x: torch.Tensor, layer: str, k: int) -> torch.Tensor:
    """haofanwang/Score-CAM's `ScoreCAM.forward(input, class_idx=k)`, re-derived as its loop:
    per channel, upsample, skip a constant map, min-max, softmax of the masked input's
    logits, add score * upsampled map; ReLU (its last step, a min-max of the whole map, is
    the caller's)."""
    with torch.no_grad():
        acts = clf.forward_taps(x)[1][layer]
        h, w = x.shape[-2:]
        total = torch.zeros(1, 1, h, w)
        for i in range(acts.shape[1]):
            sal = _upsample(acts[:, i : i + 1], h)
            if sal.max() == sal.min():
                continue
            norm = (sal - sal.min()) / (sal.max() - sal.min())
            total += F.softmax(clf(x * norm), dim=1)[0][k] * sal
        return F.relu(total)


def test_score_cam_reference_equals_the_reference_loop(tiny_classifier) -> None:
    clf = tiny_classifier("cam", 3)
    with torch.no_grad():  # channel 0 of tap c constant (0.5): the reference skips it
        clf.backbone.c[0].weight[0].zero_()
        clf.backbone.c[0].bias[0] = 0.5
    x = torch.rand(1, 3, 32, 32)
    for layer in ("b", "c"):
        ours = score_cam_reference(clf, x, layer, batch_size=3)
        assert ours.shape == (1, 3, 32, 32)
        raw = score_cam_reference(clf, x, layer, batch_size=3, normalise="none")
        for k in range(3):
            expected = _reference_score_cam(clf, x, layer, k)[0, 0]
            torch.testing.assert_close(raw[0, k], expected, rtol=1e-5, atol=1e-5)
            scaled = (expected - expected.min()) / (expected.max() - expected.min())
            torch.testing.assert_close(ours[0, k], scaled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(activation_maps("scorecam-ref", clf, x, "c"), ours)
    # not the same maps as the multi-label form with a black baseline
    assert (score_cam(clf, x, "c") - ours).abs().max() > 0.05
