"""Every head and the segmenter run forward and backward on CPU with a tiny encoder."""

from __future__ import annotations

import pytest
import torch

from wsi_segment.errors import ConfigError
from wsi_segment.models.backbone import Backbone
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.heads import PDASchedule
from wsi_segment.models.segmenter import build_segmenter


@pytest.mark.parametrize("head", ["cam", "pda", "pcam", "lficam"])
@pytest.mark.parametrize("size", [64, 224])
def test_heads_forward_backward(head: str, size: int) -> None:
    kwargs = {"schedule": PDASchedule(warmup_epochs=0, mu0=0.9)} if head == "pda" else {}
    clf = build_classifier("resnet10t", {"kind": head, "dropout": 0.5, **kwargs}, 4)
    clf.train()
    n = 2 if size < 128 else 1  # BatchNorm in training mode needs > 1 value per channel
    x = torch.rand(n, 3, size, size)
    logits, taps = clf.forward_taps(x)
    target = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])[:n]
    torch.nn.functional.multilabel_soft_margin_loss(logits, target).backward()
    assert logits.shape == (n, 4)
    assert list(taps) == ["layer2", "layer3", "layer4"]
    assert [t.shape[-1] for t in taps.values()] == [size // 8, size // 16, size // 16]
    assert clf.head.fc.weight.grad is not None and clf.head.fc.weight.grad.abs().sum() > 0
    clf.eval()
    assert clf.cam(x).shape == (n, 4, size // 16, size // 16)


@pytest.mark.parametrize("size", [64, 224])
def test_segmenter_forward_backward(size: int) -> None:
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=32)
    seg.train()
    out = seg(torch.rand(2, 3, size, size))  # ASPP's pooled branch needs a batch of 2
    out.mean().backward()
    assert out.shape == (2, 4, size, size)


def test_backbone_by_name_and_aliases() -> None:
    bb = Backbone("resnet18", output_stride=8)
    assert bb.channels == {"layer2": 128, "layer3": 256, "layer4": 512}
    assert [bb.resolve_tap(a) for a in ("shallow", "mid", "deep")] == ["layer2", "layer3", "layer4"]
    assert [t.shape[-1] for t in bb(torch.rand(1, 3, 64, 64)).values()] == [8, 8, 8]
    with pytest.raises(ConfigError, match="unknown or unsupported backbone"):
        Backbone("resnet_nonexistent")
    with pytest.raises(ConfigError, match="unknown layer"):
        bb.resolve_tap("fc")
