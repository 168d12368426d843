"""Classifier output stride: dilated backbones keep three depths, and model.json records it.

Stride 8 (the paper's ResNet-38 stride) puts all three Grad-CAM taps at H/8; a model.json
written before the option existed (no `output_stride`) still loads with the old stride 16.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wsi_segment.models.backbone import Backbone
from wsi_segment.models.bundle import ModelMeta, SegmentationModel, load_model, save_model
from wsi_segment.models.cams import grad_cams
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.segmenter import build_segmenter

SIZE = 64


@pytest.mark.parametrize(
    ("stride", "sides"),
    [(32, (8, 4, 2)), (16, (8, 4, 4)), (8, (8, 8, 8))],
)
def test_feature_sizes_per_output_stride(stride: int, sides: tuple[int, int, int]) -> None:
    bb = Backbone("resnet10t", output_stride=stride)
    feats = bb(torch.rand(1, 3, SIZE, SIZE))
    assert list(feats) == ["layer2", "layer3", "layer4"]  # still three depths
    assert tuple(f.shape[-1] for f in feats.values()) == sides
    assert [f.shape[1] for f in feats.values()] == [128, 256, 512]  # distinct stages
    assert bb.config()["output_stride"] == stride


def test_dilation_changes_no_weight_shape() -> None:
    a = build_classifier("resnet10t", "pda", 4, output_stride=16).state_dict()
    b = build_classifier("resnet10t", "pda", 4, output_stride=8).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_grad_cams_at_stride_8_give_three_distinct_maps() -> None:
    torch.manual_seed(0)
    clf = build_classifier("resnet10t", "pda", 4, output_stride=8).eval()
    maps = grad_cams(clf, torch.rand(2, 3, SIZE, SIZE), relu=False, normalise="none")
    assert [tuple(m.shape) for m in maps] == [(2, 4, SIZE, SIZE)] * 3
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[1], maps[2])


def _model(stride: int) -> SegmentationModel:
    meta = ModelMeta(
        name="os",
        classes=["TE", "NEC", "LYM", "TAS"],
        colors=[(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)],
        mpp=1.0,
        tile_size=SIZE,
        provenance={"data": "unit test"},
    )
    torch.manual_seed(2)
    clf = build_classifier("resnet10t", "pda", 4, output_stride=stride)
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=16)
    return SegmentationModel(clf, seg, meta).eval()


def _tiles() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


def test_stride_8_round_trips_through_model_json(tmp_path: Path) -> None:
    model = _model(8)
    folder = save_model(model, tmp_path / "m")
    doc = json.loads((folder / "model.json").read_text())
    assert doc["architecture"]["classifier"]["backbone"]["output_stride"] == 8
    loaded = load_model(folder)
    assert loaded.classifier.backbone.output_stride == 8
    # the original prepared as load_model prepares it (CPU, fp32, channels_last): same kernels,
    # so equal bit for bit on any CPU (other memory layouts differ in the last bits on some)
    want = model.to_device("cpu").predict(_tiles())
    got = loaded.predict(_tiles())
    assert torch.equal(want[1], got[1]) and torch.equal(want[0], got[0])


def test_model_json_without_output_stride_loads_as_16(tmp_path: Path) -> None:
    folder = save_model(_model(16), tmp_path / "old")
    meta_file = folder / "model.json"
    doc = json.loads(meta_file.read_text())
    del doc["architecture"]["classifier"]["backbone"]["output_stride"]
    meta_file.write_text(json.dumps(doc))  # the sha256 covers the weights only
    loaded = load_model(folder)
    assert loaded.classifier.backbone.output_stride == 16
