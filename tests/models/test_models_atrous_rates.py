"""The segmenter's ASPP dilation rates follow its output stride, and model.json records them.

DeepLabV3+ prescribes (6, 12, 18) at output stride 16 and (12, 24, 36) at 8; smp's default
is the stride-8 set, which every model saved before the rates were recorded (the demo model
included) was built with. Such a model.json, without `atrous_rates`, must keep loading with
those rates and give the same outputs as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from wsi_segment.errors import ModelError
from wsi_segment.models.bundle import (
    ModelMeta,
    SegmentationModel,
    demo_model_dir,
    load_model,
    save_model,
)
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.meta import read_model_json
from wsi_segment.models.segmenter import Segmenter, build_segmenter

TILE = 224  # the demo model's tile: a 14 x 14 map at stride 16


def dilations(seg: Segmenter) -> list[int]:
    """The dilation of each dilated convolution of the decoder (the ASPP branches)."""
    return [
        m.dilation[0]
        for m in seg.net.decoder.modules()
        if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)
    ]


@pytest.mark.parametrize(("stride", "rates"), [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_new_segmenters_take_the_rates_of_their_output_stride(stride: int, rates: list) -> None:
    seg = build_segmenter("tu-resnet10t", 4, output_stride=stride, decoder_channels=16)
    assert dilations(seg) == rates
    assert seg.config()["atrous_rates"] == rates


def test_given_rates_are_built_and_recorded() -> None:
    seg = Segmenter("tu-resnet10t", 4, decoder_channels=16, atrous_rates=(2, 4, 6))
    assert dilations(seg) == [2, 4, 6]
    assert seg.config()["atrous_rates"] == [2, 4, 6]


def _model(**segmenter: object) -> SegmentationModel:
    meta = ModelMeta(
        name="rates",
        classes=["TE", "NEC", "LYM", "TAS"],
        colors=[(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)],
        mpp=1.0,
        tile_size=TILE,
        provenance={"data": "unit test"},
    )
    torch.manual_seed(3)
    clf = build_classifier("resnet10t", "cam", 4)
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=16, **segmenter)
    return SegmentationModel(clf, seg, meta).eval()


def _tiles() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (2, 3, TILE, TILE), dtype=torch.uint8, generator=g)


def test_rates_round_trip_through_model_json(tmp_path: Path) -> None:
    model = _model()
    folder = save_model(model, tmp_path / "new")
    doc = json.loads((folder / "model.json").read_text())
    assert doc["architecture"]["segmenter"]["atrous_rates"] == [6, 12, 18]
    loaded = load_model(folder)
    assert dilations(loaded.segmenter) == [6, 12, 18]
    want, got = model.to_device("cpu").predict(_tiles()), loaded.predict(_tiles())
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_model_json_without_rates_loads_with_the_old_rates_and_outputs(tmp_path: Path) -> None:
    """A model saved before the rates were recorded: built with smp's (12, 24, 36)."""
    old = _model(atrous_rates=(12, 24, 36))
    folder = save_model(old, tmp_path / "old")
    meta_file = folder / "model.json"
    doc = json.loads(meta_file.read_text())
    del doc["architecture"]["segmenter"]["atrous_rates"]
    meta_file.write_text(json.dumps(doc))  # the sha256 covers the weights only
    loaded = load_model(folder)
    assert dilations(loaded.segmenter) == [12, 24, 36]
    want, got = old.to_device("cpu").predict(_tiles()), loaded.predict(_tiles())
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    # the same weights under the new rates answer otherwise on a 224 px tile
    new = _model()
    new.load_state_dict(old.state_dict())
    assert not torch.equal(new.to_device("cpu").predict(_tiles())[0], want[0])


def test_the_demo_model_keeps_the_rates_it_was_trained_with() -> None:
    doc, _ = read_model_json(demo_model_dir())
    assert "atrous_rates" not in doc["architecture"]["segmenter"]
    assert doc["architecture"]["segmenter"]["output_stride"] == 16
    assert dilations(load_model(demo_model_dir()).segmenter) == [12, 24, 36]


@pytest.mark.parametrize("rates", [[6, 12], [6, 12, 0], [6.0, 12, 18], "6,12,18"])
def test_bad_rates_in_model_json_are_refused(tmp_path: Path, rates: object) -> None:
    folder = save_model(_model(), tmp_path / "bad")
    meta_file = folder / "model.json"
    doc = json.loads(meta_file.read_text())
    doc["architecture"]["segmenter"]["atrous_rates"] = rates
    meta_file.write_text(json.dumps(doc))
    with pytest.raises(ModelError) as err:
        load_model(folder)
    assert "'architecture.segmenter.atrous_rates'" in str(err.value)
    assert "allowed: a list of 3 ASPP dilation rates (integers 1 to 128)" in str(err.value)
