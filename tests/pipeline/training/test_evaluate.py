"""Evaluation on the real sample: perfect predictions score exactly 1, labels from masks, and
the labels scored are the ones the slide path writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reference_inference import predict_unpadded
from wsi_segment.errors import DatasetError
from wsi_segment.models.bundle import demo_model_dir, load_model
from wsi_segment.models.labels import UNCLASSIFIED
from wsi_segment.models.meta import DEFAULT_EPSILON
from wsi_segment.models.runtimes.executor import TorchExecutor
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.pipeline.training.datasets import open_dataset
from wsi_segment.pipeline.training.evaluate import (
    GateCheck,
    evaluate,
    module_predictor,
    present_labels,
    score_split,
    segmentation_predictor,
)
from wsi_segment.pipeline.training.train_batches import load_batch
from wsi_segment.wsi.tiling import TileGrid

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"


def test_ground_truth_scores_one_and_background_is_ignored() -> None:
    ds = open_dataset(SAMPLE)
    # predicting the truth everywhere (and class 0 on background pixels) is perfect
    (cm,) = score_split(ds, "test", lambda img, gt: [torch.where(gt == 4, 0, gt)], batch_size=4)
    s = cm.scores()
    assert s.miou == 1.0 and s.acc == 1.0 and s.fwiou == 1.0
    total = sum(int((ds.read_mask(it.mask) < 4).sum()) for it in ds.mask_items("test"))
    assert cm.matrix.sum() == total


def test_constant_prediction_matches_hand_count() -> None:
    ds = open_dataset(SAMPLE)
    (cm,) = score_split(ds, "val", lambda img, gt: [torch.full_like(gt, 3)], batch_size=2)
    # val masks: TAS pixels 49962 + 4369, others 1096 TE + 41585 LYM + 20848 TE + 27930 NEC
    tas, other = 49962 + 4369, 1096 + 41585 + 20848 + 27930
    assert cm.matrix[:, 3].sum() == tas + other
    s = cm.scores()
    assert np.isclose(s.iou[3], tas / (tas + other)) and np.isclose(s.acc, tas / (tas + other))


def test_present_labels() -> None:
    gt = torch.tensor([[[0, 4], [2, 2]], [[4, 4], [4, 4]]], dtype=torch.uint8)
    assert present_labels(gt, 4).tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]


def test_gate_check_counts_gated_present_classes() -> None:
    # patch 0: classes 0 (3 px) and 2 (1 px); patch 1: class 1 (4 px)
    gt = torch.tensor([[[0, 0], [0, 2]], [[1, 1], [1, 1]]], dtype=torch.uint8)
    probs = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.05, 0.8, 0.2, 0.1]])
    check = GateCheck(4, epsilon=0.1)
    check.update(probs, gt)
    d = check.as_dict()
    # present: (0,0) kept, (0,2) gated at exactly eps, (1,1) kept; absent kept: (0,1), (1,2)
    assert d["present_classes"] == 3 and d["present_gated"] == 1
    assert d["absent_classes"] == 5 and d["absent_kept"] == 2
    assert d["tissue_pixels_gated"] == 1 / 8 and d["epsilon"] == 0.1


@pytest.fixture(scope="module")
def demo() -> SegmentationModel:
    torch.set_num_threads(1)
    return load_model(demo_model_dir(), device="cpu")


def _test_split() -> tuple[torch.Tensor, torch.Tensor]:
    ds = open_dataset(SAMPLE)
    items = ds.mask_items("test")
    gt = torch.from_numpy(np.stack([ds.read_mask(it.mask) for it in items]))
    return load_batch([it.image for it in items]), gt


@pytest.fixture(scope="module")
def patches() -> tuple[torch.Tensor, torch.Tensor]:
    """The test split's patches and masks, read once for the module's tests."""
    return _test_split()


@pytest.fixture(scope="module")
def top_probs(demo: SegmentationModel, patches: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The demo classifier's highest probability per test patch (before any gate): one
    forward pass for the tests that place epsilon by it."""
    _, cls = demo.predict(patches[0])
    return cls.max(dim=1).values


def test_evaluate_and_validation_score_the_labels_the_slide_path_writes(
    demo, patches, top_probs
) -> None:
    """For real LUAD-HistoSeg patches and the demo model: the labels `evaluate` scores and
    those stage-3 validation scores equal what the slide path's reduction writes for the
    same tiles (the engine's forward pass, a grid of whole tiles), at the model's epsilon, at
    one where the gate removes every class of some tiles, and at one where it removes every
    class of every tile (Unclassified everywhere)."""
    images, gt = patches
    tile = int(images.shape[-1])
    grid = TileGrid(tile=tile, overlap=0, downsample=1)
    top = top_probs  # a tile is all gated where epsilon >= its top probability
    half = float(top.median())
    all_gated = float(top.max())
    assert 0 < int((top <= half).sum()) < len(top) and all_gated < 1.0
    nhwc = images.permute(0, 2, 3, 1).numpy()
    for eps in (demo.meta.gate_epsilon, half, all_gated):
        demo.meta.gate_epsilon = eps
        (scored,) = segmentation_predictor(demo)(images, gt)
        executor = TorchExecutor(demo, Geometry.whole(tile), "fp32")
        slide = predict_unpadded(executor, nhwc, grid, batch_size=4).labels
        np.testing.assert_array_equal(np.asarray(scored), slide)
        val = module_predictor(demo.segmenter, demo.classifier, eps, torch.device("cpu"))
        np.testing.assert_array_equal(np.asarray(val(images, gt)[0]), slide)
        gated = (top <= eps).numpy()
        assert (slide[gated] == UNCLASSIFIED).all() and not (slide[~gated] == UNCLASSIFIED).any()
    demo.meta.gate_epsilon = DEFAULT_EPSILON


def test_unclassified_counts_as_wrong_on_labelled_pixels(top_probs, tmp_path: Path) -> None:
    """`evaluate` of a model folder whose gate rules every class out on every test patch
    (model.json's epsilon above every classifier probability): every labelled pixel is
    Unclassified, so every class scores 0 (not class 0 everywhere, the official rule)."""
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir(), model)
    doc = json.loads((model / "model.json").read_text())
    doc["gate_epsilon"] = float(top_probs.max())
    (model / "model.json").write_text(json.dumps(doc))
    result = evaluate(SAMPLE, model, "test", pseudo=False, device="cpu", progress=False)
    assert result["miou"] == 0.0 and result["acc"] == 0.0
    present = result["gate_check"]["present_classes"]
    assert present > 0 and result["gate_check"]["present_gated"] == present
    plain = evaluate(SAMPLE, model, "test", gate=False, pseudo=False, device="cpu", progress=False)
    assert plain["acc"] > 0.0  # the same model scores without the gate


def test_non_square_patches_are_refused_with_a_dataset_error(demo, patches) -> None:
    images, gt = patches
    with pytest.raises(DatasetError, match="224 x 112 px: evaluate scores square patches"):
        segmentation_predictor(demo)(images[:, :, :112], gt[:, :112])
