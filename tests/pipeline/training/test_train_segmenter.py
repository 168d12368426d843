"""Stage 3 with the official choices: SGD groups, blur, no vertical flip, the official loss,
and validation with or without the gate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cancel_points import CancelledAtCheck
from wsi_segment.errors import SlideInterrupted
from wsi_segment.pipeline.cancellation import Cancellation
from wsi_segment.pipeline.training.datasets import WsssDataset, open_dataset
from wsi_segment.pipeline.training.make_pseudo_masks import mask_name
from wsi_segment.pipeline.training.recipes import RECIPES
from wsi_segment.pipeline.training.train_segmenter import (
    SegmenterConfig,
    train_segmenter,
    validate,
)
from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset

PAPER = RECIPES["paper"]
CFG = SegmenterConfig(
    encoder="tu-resnet10t", epochs=1, batch_size=4, decoder_channels=16, max_steps=1, seed=2,
    optim=PAPER.stage3, recipe="paper", vflip=False, blur=True, loss="official", val_gate=False,
)  # fmt: skip


class AllAbsent(torch.nn.Module):
    """A classifier that rules every class out: the gate then zeroes every probability."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), self.k), -10.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[WsssDataset, list[Path]]:
    """A 64 px synthetic dataset and three pseudo-mask folders (its val masks' stand-ins)."""
    root = tmp_path_factory.mktemp("syn")
    ds = open_dataset(make_synthetic_dataset(root, SyntheticSpec(4, 3, 1, 64, seed=3)))
    rng = np.random.default_rng(0)
    dirs = []
    for depth in ("shallow", "mid", "deep"):
        d = root / "pseudo" / depth
        d.mkdir(parents=True)
        for item in ds.train_items():
            mask = rng.integers(0, ds.num_classes, (64, 64)).astype(np.uint8)
            mask[:16] = 255  # background rows
            Image.fromarray(mask).save(d / mask_name(item))
        dirs.append(d)
    return ds, dirs


def test_ungated_validation_scores_the_plain_argmax(tiny, tmp_path: Path) -> None:
    ds, dirs = tiny
    cpu = torch.device("cpu")
    gate_all = AllAbsent(ds.num_classes)
    model, state = train_segmenter(ds, CFG, dirs, tmp_path / "ungated", cpu, gate_all)
    score = state["history"][0]["val_miou"]
    assert score == validate(ds, model, None, cpu, "val", 4)
    assert score != validate(ds, model, gate_all, cpu, "val", 4)  # what the gate would give
    assert state["best"]["val_miou"] == score


def test_stage3_starts_from_a_whole_deeplab_file(tiny, tmp_path: Path) -> None:
    """`--seg-pretrained` naming a whole DeepLabV3+ (6 classes, safetensors) starts stage 3's
    encoder, ASPP and decoder from it, its last layer fresh; lr 0 keeps the start visible."""
    from dataclasses import replace

    from safetensors.torch import save_file

    from wsi_segment.models.segmenter import build_segmenter
    from wsi_segment.pipeline.training.warm_start import pretrained_record

    ds, dirs = tiny
    torch.manual_seed(9)
    source = build_segmenter("tu-resnet10t", 6, decoder_channels=16).net
    f = tmp_path / "deeplab.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(f))
    cfg = replace(CFG, pretrained=str(f), optim=replace(PAPER.stage3, lr=0.0), seed=1)
    model, _ = train_segmenter(ds, cfg, dirs, tmp_path / "stage3", torch.device("cpu"), None)

    theirs = dict(source.named_parameters())
    ours = dict(model.net.named_parameters())
    assert any(k.startswith("decoder.aspp") for k in ours)
    for key, value in ours.items():
        if key.startswith("segmentation_head."):
            assert value.shape[0] == ds.num_classes  # the last layer: this task's classes
        else:
            assert torch.equal(value, theirs[key]), key
    record = pretrained_record(tmp_path / "stage3")
    assert record is not None and record["scope"] == "model"
    assert record["missing"] == ["segmentation_head.0.bias", "segmentation_head.0.weight"]


def test_a_cancelled_run_stops_before_its_next_step(tiny, tmp_path: Path) -> None:
    """Once the run's token is cancelled (`pipeline.cancellation`), stage 3 raises its stop
    before the next step: no epoch is recorded, nothing is kept as the best."""
    ds, dirs = tiny
    stop = Cancellation()
    stop.cancel(SlideInterrupted)
    work = tmp_path / "stage3"
    with pytest.raises(SlideInterrupted):
        train_segmenter(ds, CFG, dirs, work, torch.device("cpu"), None, stop)
    assert not (work / "best.safetensors").exists() and not (work / "result.json").exists()


def test_a_resumed_run_ends_with_an_uninterrupted_run_s_weights(tiny, tmp_path: Path) -> None:
    """DeepLabV3+'s ASPP dropout drew from torch's global generator, which a resumed run
    had seeded otherwise: stage 3 stopped after epoch 1 and resumed ended with other weights
    (and losses) than an uninterrupted run. The history (each epoch's loss and val mIoU) is
    compared as well as the weights kept: the best epoch's might match by chance."""
    ds, dirs = tiny
    cfg = replace(CFG, epochs=2, optim=RECIPES["default"].stage3, recipe="default")
    device = torch.device("cpu")
    full, full_state = train_segmenter(ds, cfg, dirs, tmp_path / "full", device)
    with pytest.raises(SlideInterrupted):  # epoch 1 saved, stopped before epoch 2's step
        train_segmenter(ds, cfg, dirs, tmp_path / "cut", device, None, CancelledAtCheck(2))
    resumed, resumed_state = train_segmenter(ds, cfg, dirs, tmp_path / "cut", device)
    assert resumed_state["history"] == full_state["history"]
    want, got = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
