"""Evaluation on a split with pixel masks: the segmentation, and the pseudo masks per depth.

Scores follow the paper's official metric (pipeline.training.metrics): one confusion matrix over
the split, background/exclude pixels ignored. The segmentation scored is what the slide path
writes for the same tile: the model's tile graph of the whole tile (gate, its
fallback, and `Unclassified` where the gate rules every class out, which counts as wrong on
a labelled pixel); stage-3 validation scores the same rule (`module_predictor`). Pseudo
masks are made from the ground-truth patch labels (the classes present in each mask), as
stage 2 does with the training labels, so their scores say how good the supervision of
stage 3 was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsi_segment.errors import DatasetError, ModelError
from wsi_segment.models.bundle import load_model
from wsi_segment.models.cam_methods import DEFAULT_CAM_METHOD, recorded_method
from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.pseudo_masks import pseudo_masks
from wsi_segment.models.reduction import tile_labels
from wsi_segment.models.runtimes.executor import TorchExecutor
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.pipeline.training.datasets import WsssDataset, open_dataset
from wsi_segment.pipeline.training.metrics import ConfusionMatrix
from wsi_segment.pipeline.training.train_batches import load_batch
from wsi_segment.pipeline.training.train_classifier import to_input

# predict(images uint8 (N,3,H,W), gt masks uint8 (N,H,W)) -> one label batch (N,H,W) per output
Predictor = Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor | np.ndarray]]


def _clean(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def score_split(
    ds: WsssDataset,
    split: str,
    predict: Predictor,
    n_outputs: int = 1,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "evaluate",
) -> list[ConfusionMatrix]:
    """Run `predict` over the split in batches; one confusion matrix per output."""
    items = ds.mask_items(split)
    cms = [ConfusionMatrix(ds.num_classes) for _ in range(n_outputs)]
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        images = load_batch([it.image for it in chunk])
        gt = torch.from_numpy(np.stack([ds.read_mask(it.mask) for it in chunk]))
        outputs = predict(images, gt)
        for cm, pred in zip(cms, outputs, strict=True):
            cm.update(np.asarray(pred), gt.numpy())
        bar.update(len(chunk))
        s = cms[0].scores()
        bar.set_postfix(mIoU=f"{s.miou:.3f}")
    bar.close()
    return cms


def present_labels(gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K) float 0/1: which classes occur in each ground-truth mask."""
    return torch.stack([(gt == k).flatten(1).any(1) for k in range(num_classes)], dim=1).float()


class GateCheck:
    """How the classification gate treats a split, from the classes present in each mask.

    A present class with y_k <= epsilon is gated: its pixels are lost (they go to another
    class, or to `Unclassified` where every class of the patch is gated). An absent class
    with y_k > epsilon is let through (harmless unless the segmenter also predicts it).
    `update` per batch, `as_dict` at the end.
    """

    def __init__(self, num_classes: int, epsilon: float) -> None:
        self.k, self.epsilon = num_classes, float(epsilon)
        self.present = self.present_gated = self.absent = self.absent_kept = 0
        self.pixels = self.pixels_gated = 0.0

    def update(self, cls_probs: torch.Tensor, gt: torch.Tensor) -> None:
        present = present_labels(gt, self.k) > 0.5
        probs = cls_probs.float().cpu()
        gated = present & (probs <= self.epsilon)
        area = torch.stack([(gt == c).flatten(1).sum(1) for c in range(self.k)], 1).double()
        self.present += int(present.sum())
        self.present_gated += int(gated.sum())
        self.absent += int((~present).sum())
        self.absent_kept += int((~present & (probs > self.epsilon)).sum())
        self.pixels += float(area.sum())
        self.pixels_gated += float((area * gated).sum())

    def as_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "present_classes": self.present,
            "present_gated": self.present_gated,
            "absent_classes": self.absent,
            "absent_kept": self.absent_kept,
            "tissue_pixels_gated": self.pixels_gated / self.pixels if self.pixels else None,
        }


def segmentation_predictor(
    model: SegmentationModel, gate: bool = True, check: GateCheck | None = None
) -> Predictor:
    """The slide path's labels of each whole tile (its tile graph at `Geometry.whole`: the
    gated argmax, its fallback, and `UNCLASSIFIED` where the gate keeps no class); `check`
    sees the classifier's probabilities."""

    def predict(images: torch.Tensor, gt: torch.Tensor) -> list[torch.Tensor]:
        h, w = int(images.shape[-2]), int(images.shape[-1])
        if h != w:
            raise DatasetError(
                f"patches of {w} x {h} px: evaluate scores square patches, as the slide path's "
                "tiles are; crop the split's images and masks square"
            )
        executor = TorchExecutor(model, Geometry.whole(w, gate), "fp32")
        out = executor.run(images.permute(0, 2, 3, 1))
        if check is not None:
            check.update(torch.from_numpy(out.cls_probs), gt)
        return [torch.from_numpy(out.labels)]

    return predict


def module_predictor(
    segmenter: torch.nn.Module,
    classifier: torch.nn.Module | None,
    epsilon: float,
    device: torch.device,
) -> Predictor:
    """The same labels from a segmenter and a classifier held apart, as in training (inputs
    scaled to [0, 1], `to_input`): `tile_labels`, the slide path's rule; no classifier, no
    gate."""

    @torch.no_grad()
    def predict(images: torch.Tensor, gt: torch.Tensor) -> list[torch.Tensor]:
        x = to_input(images, device)
        cls_logits = classifier(x) if classifier is not None else None
        return [tile_labels(segmenter(x), cls_logits, epsilon).cpu()]

    return predict


def pseudo_predictor(
    classifier: PatchClassifier,
    num_classes: int,
    layers: Sequence[str] = ("shallow", "mid", "deep"),
    use_background: bool = True,
    normalisation: dict[str, Any] | None = None,
    method: str = DEFAULT_CAM_METHOD,
) -> Predictor:
    """Pseudo masks per layer from the ground-truth patch labels, with the CAM `method`."""
    norm = normalisation or {"mean": [0.0] * 3, "std": [1.0] * 3}

    def predict(images: torch.Tensor, gt: torch.Tensor) -> list[torch.Tensor]:
        return pseudo_masks(
            classifier,
            images,
            present_labels(gt, num_classes),
            layers=layers,
            mean=norm["mean"],
            std=norm["std"],
            use_background=use_background,
            method=method,
        )

    return predict


def evaluate(
    data: str | Path,
    model_dir: str | Path,
    split: str = "test",
    gate: bool = True,
    pseudo: bool = True,
    device: str = "auto",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """{miou, fwiou, acc, iou: {class: IoU}, split, images, gate, gate_check, pseudo_masks: {layer: {...}}}.

    `gate_check` (see `GateCheck`) says how many present classes the classifier gated at
    the model's epsilon, whether or not the gate was applied to the scores.
    """
    ds = open_dataset(data)
    if not ds.has_masks(split):
        raise DatasetError(f"{Path(data) / split}: no img/ + mask/ folders to evaluate on")
    model = load_model(model_dir, device=device)
    if list(model.meta.classes) != list(ds.classes):
        raise ModelError(
            f"{model_dir}: model classes {model.meta.classes} differ from the dataset's {list(ds.classes)}"
        )
    stderr = __import__("sys").stderr
    show = progress and stderr is not None and stderr.isatty()
    check = GateCheck(ds.num_classes, model.meta.gate_epsilon)
    predictor = segmentation_predictor(model, gate, check)
    (cm,) = score_split(ds, split, predictor, 1, batch_size, show, f"evaluate {split}")
    scores = cm.scores().as_dict(ds.classes)
    result = {
        "miou": _clean(scores["miou"]),
        "fwiou": _clean(scores["fwiou"]),
        "acc": _clean(scores["acc"]),
        "iou": scores["iou"],
        "split": split,
        "images": len(ds.mask_items(split)),
        "gate": gate,
        "gate_check": check.as_dict(),
    }
    if pseudo and isinstance(model.classifier, PatchClassifier):
        layers = ("shallow", "mid", "deep")
        predictor = pseudo_predictor(
            model.classifier,
            ds.num_classes,
            layers,
            ds.background_rule,
            model.meta.normalisation,
            recorded_method(model.meta.provenance)["method"],  # what stage 2 used
        )
        cms = score_split(
            ds, split, predictor, len(layers), batch_size, show, f"pseudo masks {split}"
        )
        result["pseudo_masks"] = {}
        for layer, c in zip(layers, cms, strict=True):
            d = c.scores().as_dict(ds.classes)
            result["pseudo_masks"][layer] = {
                **{k: _clean(d[k]) for k in ("miou", "fwiou", "acc")},
                "iou": d["iou"],
            }
    return result
