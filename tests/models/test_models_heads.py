"""Heads against their formulas on hand-built tensors: PDA, its schedule, PCAM, CAM, LFI-CAM."""

from __future__ import annotations

import math

import pytest
import torch

from wsi_segment.errors import ConfigError
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.heads import PCAMHead, PDAHead, PDASchedule, pda_attention
from wsi_segment.models.heads.pcam import pcam_pool

# Two channels on a 2 x 2 grid.
FEATS = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [1.0, 2.0]]]])
# Three classes: class 0 reads channel 0, class 1 channel 1, class 2 is -channel 0 (relu -> 0).
WEIGHT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]).view(3, 2, 1, 1)


def test_pda_attention_exact_positions_and_values() -> None:
    att = pda_attention(FEATS, WEIGHT, mu=0.7)
    # beta_0 = 0.7 * 4 = 2.8 drops (1,0)=3 and (1,1)=4 -> [[1, 2], [0, 0]]
    # beta_1 = 0.7 * 4 = 2.8 drops (0,0)=4           -> [[0, 0], [1, 2]]
    # class 2: relu(-ch0) = 0 everywhere              -> [[0, 0], [0, 0]]
    # mean over K = 3 classes (not a hard-coded 4):
    expected = torch.tensor([[[[1 / 3, 2 / 3], [1 / 3, 2 / 3]]]])
    torch.testing.assert_close(att, expected, rtol=0, atol=1e-7)
    # mu = 1 drops nothing: attention = mean of the relu'd maps.
    full = torch.tensor([[[[5 / 3, 2 / 3], [4 / 3, 2.0]]]])
    torch.testing.assert_close(pda_attention(FEATS, WEIGHT, mu=1.0), full, rtol=0, atol=1e-7)


def test_pda_head_applies_attention_only_when_training_and_active() -> None:
    head = PDAHead(2, 3, dropout=0.0, schedule=PDASchedule(mu0=0.7, warmup_epochs=1))
    with torch.no_grad():
        head.fc.weight.copy_(WEIGHT)
    head.train()
    plain = torch.tensor([[2.5, 1.75, -2.5]])  # fc(GAP(m)): channel means 2.5 and 1.75
    torch.testing.assert_close(head(FEATS), plain)  # epoch 0: warm-up, PDA off
    head.schedule.step()
    # m * A: ch0 = [[1/3, 4/3], [1, 8/3]] (mean 4/3), ch1 = [[4/3, 0], [1/3, 4/3]] (mean 3/4)
    torch.testing.assert_close(head(FEATS), torch.tensor([[4 / 3, 0.75, -4 / 3]]))
    head.eval()
    torch.testing.assert_close(head(FEATS), plain)  # inference uses plain features


def test_pda_schedule_paper_default() -> None:
    s = PDASchedule()
    assert (s.sigma, s.floor, s.warmup_epochs, s.mu0) == (0.985, 0.65, 3, 1.0)
    assert [s.active_at(e) for e in range(5)] == [False, False, False, True, True]
    assert [s.mu_at(e) for e in (0, 3, 4, 5)] == [1.0, 1.0, 0.985, 0.985**2]
    assert s.mu_at(31) == pytest.approx(0.985**28) and 0.985**28 > 0.65
    assert s.mu_at(32) == 0.65 and s.mu_at(100) == 0.65  # 0.985**29 < 0.65: floor
    for _ in range(4):
        s.step()
    assert s.epoch == 4 and s.active and s.mu == 0.985


def test_pda_schedule_official_variant() -> None:
    s = PDASchedule.official()
    assert s.mu_at(0) == 1.0 and s.mu_at(3) == pytest.approx(0.98**3)
    assert not s.active_at(2) and s.active_at(3)
    assert s.mu_at(21) == pytest.approx(0.98**21) and s.mu_at(22) == 0.65
    with pytest.raises(ConfigError):
        PDASchedule(floor=0.9, mu0=0.8)


def test_pda_schedule_presets_and_overrides() -> None:
    assert PDASchedule.preset() == PDASchedule()
    assert PDASchedule.preset("official") == PDASchedule.official()
    s = PDASchedule.preset("official", sigma=0.99, floor=0.7, warmup_epochs=1)
    assert (s.sigma, s.floor, s.warmup_epochs, s.decay_during_warmup) == (0.99, 0.7, 1, True)
    # after 20 epochs (last epoch 19) the threshold ends at 0.985**16 vs 0.98**19
    assert PDASchedule.preset("paper").mu_at(19) == pytest.approx(0.7852, abs=1e-4)
    assert PDASchedule.preset("official").mu_at(19) == pytest.approx(0.6812, abs=1e-4)
    with pytest.raises(ConfigError, match="unknown PDA schedule 'fast'"):
        PDASchedule.preset("fast")
    with pytest.raises(ConfigError, match="sigma"):
        PDASchedule.preset("paper", sigma=1.5)


def test_heads_default_to_the_methods_dropout() -> None:
    for kind in ("cam", "pda", "pcam", "lficam"):
        head = build_classifier("resnet10t", kind, 4).head
        assert head.dropout.p == 0.5 and head.config()["dropout"] == 0.5


def test_pcam_pooling_formula() -> None:
    feats = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])  # (1, C=2, 1, 2)
    head = PCAMHead(2, 1)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        head.fc.bias.fill_(0.5)
    head.eval()
    # score map s = [0 - 1 + .5, 2 - 1 + .5] = [-0.5, 1.5]; a = sigmoid(s) / sum
    sig = [1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-1.5))]
    a1 = sig[1] / (sig[0] + sig[1])
    # pooled = a0 * [0, 1] + a1 * [2, 1] = [2 a1, 1]; logit = 2 a1 - 1 + 0.5
    torch.testing.assert_close(
        pcam_pool(feats, head.class_maps(feats)), torch.tensor([[[2 * a1, 1.0]]])
    )
    torch.testing.assert_close(head(feats), torch.tensor([[2 * a1 - 0.5]]))


def test_pcam_dropout_drops_the_pooled_feature_not_the_pooling_weights() -> None:
    """In training, dropout (p 0.5) zeroes or doubles each element of the pooled feature
    [2 a1, 1] of the formula test above, pooled with the weights of the features as they are
    (as Ye et al.'s code: PcamPool, then dropout): the logit 2 a1 m0 * 2 - m1 * 2 + 0.5 takes
    exactly four values. Dropping feature channels first would pool with the weights of the
    dropped features (both kept: doubled features, scores [-1.5, 2.5], another a1)."""
    feats = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])
    head = PCAMHead(2, 1, dropout=0.5)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        head.fc.bias.fill_(0.5)
    sig = [1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-1.5))]
    a1 = sig[1] / (sig[0] + sig[1])
    allowed = torch.tensor([0.5, 0.5 + 4 * a1, -1.5, -1.5 + 4 * a1])
    head.train()
    seen = set()
    for seed in range(32):
        torch.manual_seed(seed)
        logit = head(feats)[0, 0]
        hit = torch.isclose(logit, allowed, rtol=0, atol=1e-6)
        assert hit.any(), f"seed {seed}: logit {float(logit)} not in {allowed.tolist()}"
        seen.add(int(hit.nonzero()[0]))
    assert seen == {0, 1, 2, 3}
    head.eval()  # no dropout: the formula's logit
    torch.testing.assert_close(head(feats), torch.tensor([[2 * a1 - 0.5]]))


def test_pcam_eval_logits_are_the_undropped_pooling_exactly() -> None:
    """What inference computed before dropout moved (dropout is the identity in eval)."""
    torch.manual_seed(0)
    head = PCAMHead(8, 3, dropout=0.5).eval()
    feats = torch.rand(2, 8, 5, 5)
    pooled = pcam_pool(feats, head.class_maps(feats))
    assert head.fc.bias is not None
    want = (pooled * head.fc.weight.flatten(1).unsqueeze(0)).sum(dim=2) + head.fc.bias
    assert torch.equal(head(feats), want)


@pytest.mark.parametrize("kind", ["cam", "pda", "lficam", "lficam-ref"])
def test_gap_of_class_map_equals_logit(kind: str) -> None:
    clf = build_classifier("resnet10t", kind, 4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits, taps = clf.forward_taps(x)
        maps = clf.head.class_maps(taps["layer4"], x)  # before relu
    torch.testing.assert_close(maps.mean(dim=(2, 3)), logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(clf.cam(x), torch.relu(maps))


def test_lficam_importance_and_maps() -> None:
    clf = build_classifier("resnet10t", "lficam", 4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = clf.backbone(x)["layer4"]
        w = clf.head.importance(feats, x)
        torch.testing.assert_close(w.sum(dim=1), torch.ones(2))
        expected = torch.relu(
            torch.nn.functional.conv2d(feats * w[:, :, None, None], clf.head.fc.weight)
        )
        torch.testing.assert_close(clf.head.lfi_maps(feats, x), expected)
        att = clf.head.attention(feats, x)
    assert (
        att.shape == (2, 1, 4, 4)
        and att.min() >= 0
        and att.amax(dim=(2, 3)).allclose(torch.ones(2, 1))
    )
    with pytest.raises(ConfigError, match="needs the input image"):
        clf.head(feats)


def test_lficam_importance_is_per_sample_and_not_detached() -> None:
    """The design we keep (docs/models.md): each patch's importances come from its own masked
    images only (softmax over its channels, not over the batch), and gradients reach the
    features through them."""
    head = build_classifier("resnet10t", "lficam", 4).head.eval()
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(3, head.in_channels, 4, 4, generator=gen)
    image = torch.rand(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        alone = head.importance(feats[:1], image[:1])
        batched = head.importance(feats, image)
        logits_alone, logits_batched = head(feats[:1], image[:1]), head(feats, image)
    torch.testing.assert_close(batched[:1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits_batched[:1], logits_alone, rtol=1e-5, atol=1e-5)
    # changing another patch of the batch leaves this one's importances alone
    with torch.no_grad():
        other = head.importance(torch.cat([feats[:1], feats[1:] * 3.0]), image)
    torch.testing.assert_close(other[:1], alone, rtol=1e-5, atol=1e-6)

    grad_feats = feats.clone().requires_grad_(True)
    head.importance(grad_feats, image)[0, 0].backward()
    assert grad_feats.grad is not None and grad_feats.grad[0].abs().sum() > 0
    assert grad_feats.grad[1:].abs().sum() == 0  # no path between patches


def _reference_lfiv2(head, ex: torch.Tensor, image: torch.Tensor) -> tuple:
    """TrustworthyAI-kr/LFI-CAM `models/imagenet/resnet_lfiv2.py` `ResNet.forward` from the
    layer4 output on, re-derived step by step with its in-place NaN handling; the FIN's
    att_conv1..4 / att_bn1..4 are the head's `fin` layers."""
    F = torch.nn.functional
    size = tuple(ex.shape[-2:])
    input_resized = F.interpolate(image.mean(dim=1, keepdim=True), size, mode="bilinear")
    fe = ex.clone()
    org = fe.clone()
    a1, a2, a3, a4 = fe.size()
    fe = fe.view(a1, a2, -1)
    fe -= fe.min(2, keepdim=True)[0]
    fe /= fe.max(2, keepdim=True)[0]
    fe = fe.view(a1, a2, a3, a4)
    fe[torch.isnan(fe)] = 1
    fe[(org == 0)] = 0
    ax = fe * input_resized
    convs = [m for m in head.fin if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in head.fin if isinstance(m, torch.nn.BatchNorm2d)]
    for conv, bn in zip(convs, bns, strict=True):
        ax = F.relu(bn(conv(ax)))
    w = F.softmax(F.avg_pool2d(ax, size).view(ax.size(0), -1), dim=1)
    sal = torch.zeros(a1, 1, a3, a4)
    for i in range(a2):
        sal += w[:, i][:, None, None, None] * ex[:, i : i + 1]
    sal = F.relu(sal)
    org = sal.clone()
    sal = sal.view(a1, 1, -1)
    sal -= sal.min(2, keepdim=True)[0]
    sal /= sal.max(2, keepdim=True)[0]
    sal = sal.view(a1, 1, a3, a4)
    sal[torch.isnan(sal)] = org[torch.isnan(sal)]
    rx = F.avg_pool2d(sal * ex + ex, size).view(a1, -1)
    return F.linear(rx, head.fc.weight.flatten(1), head.fc.bias), sal, w


def test_lficam_ref_head_equals_the_reference_formula() -> None:
    from wsi_segment.models.heads import LFICAMRefHead

    torch.manual_seed(0)
    head = LFICAMRefHead(6, 3)
    for m in head.fin:  # BatchNorm in eval mode with statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(0.0, 0.3)
    head.eval()
    ex = torch.relu(torch.randn(3, 6, 5, 5))
    ex[:, 1] = 0.7  # a constant channel: normalised to 1
    ex[:, 2] = 0.0  # an all-zero channel: stays 0
    ex[2] = 0.0  # a patch of zero features: a constant attention map, kept as it is
    image = torch.rand(3, 3, 20, 20)
    with torch.no_grad():
        logits, att, w = _reference_lfiv2(head, ex, image)
        torch.testing.assert_close(head.importance(ex, image), w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head.attention(ex, image), att, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head(ex, image), logits, rtol=1e-5, atol=1e-6)
    assert [tuple(m.weight.shape) for m in head.fin if isinstance(m, torch.nn.Conv2d)] == [
        (6, 6, 3, 3)
    ] * 4  # four 3x3 convolutions across all channels

    clf = build_classifier("resnet10t", "lficam-ref", 3).eval()
    x = torch.rand(1, 3, 64, 64)
    from wsi_segment.models.cams import activation_maps, lfi_cam_reference

    maps = activation_maps("lficam-ref", clf, x, normalise="none")
    with torch.no_grad():
        feats = clf.backbone(x)["layer4"]
        expected = torch.nn.functional.interpolate(
            _reference_lfiv2(clf.head, feats, x)[1], (64, 64), mode="bilinear"
        )
    assert maps.shape == (1, 3, 64, 64)  # one class-agnostic map, given for every class
    for k in range(3):
        torch.testing.assert_close(maps[:, k : k + 1], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="lficam-ref head, not 'lficam'"):
        lfi_cam_reference(build_classifier("resnet10t", "lficam", 3), x)


def test_head_names_are_the_registry_keys_and_the_cli_choices() -> None:
    """One list of names: the torch-free HEAD_NAMES the CLI offers is the registry's."""
    import argparse

    from wsi_segment.flows import cli_train
    from wsi_segment.models.head_names import HEAD_NAMES
    from wsi_segment.models.heads import HEADS

    assert tuple(HEADS) == HEAD_NAMES
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    train = cli_train.add_parser(sub)
    (head,) = [a for a in train._actions if a.dest == "head"]
    assert tuple(head.choices) == HEAD_NAMES and head.default == "pda"
