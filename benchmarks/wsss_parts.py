"""Building blocks of the WSSS synthetic benchmark: predictors, the fully supervised
baseline, and scoring on part of a split (for the slow Score-CAM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsi_segment.models.background import background_mask
from wsi_segment.models.cam_methods import cam_method
from wsi_segment.models.cams import activation_maps
from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.pretrained import load_pretrained
from wsi_segment.models.pseudo_masks import label_from_maps
from wsi_segment.models.segmenter import build_segmenter, multilayer_pseudo_loss
from wsi_segment.pipeline.training.datasets import MaskItem, WsssDataset
from wsi_segment.pipeline.training.evaluate import Predictor, module_predictor, present_labels
from wsi_segment.pipeline.training.metrics import ConfusionMatrix
from wsi_segment.pipeline.training.recipes import make_optimizer
from wsi_segment.pipeline.training.train_batches import (
    augment,
    batch_count,
    epoch_batches,
    load_batch,
)
from wsi_segment.pipeline.training.train_classifier import schedule_lrs, seeded, to_input
from wsi_segment.pipeline.training.train_segmenter import SegmenterConfig, validate
from wsi_segment.synthetic.dataset import BACKGROUND, SyntheticSpec, random_label_map
from wsi_segment.synthetic.slides import CLASS_NAMES, render_tissue


def cam_predictor(
    classifier: PatchClassifier, method: str, k: int, use_background: bool, layer: str = "deep"
) -> Predictor:
    """Single-layer pseudo masks from `method` at `layer`, with the true patch labels (as
    stage 2 makes them: joint normalisation over classes, the background rule)."""

    def predict(images: torch.Tensor, gt: torch.Tensor) -> list[torch.Tensor]:
        x = to_input(images, torch.device("cpu"))
        maps = activation_maps(method, classifier, x, layer, normalise="none")
        bg = background_mask(images) if use_background else None
        present = present_labels(gt, k) > 0.5
        return [label_from_maps(maps, present, bg, relu=cam_method(method).relu)]

    return predict


def train_fully_supervised(
    ds_masks: WsssDataset,
    items: list[MaskItem],
    cfg: SegmenterConfig,
    val: WsssDataset | None = None,
) -> torch.nn.Module:
    """DeepLabV3+ on exact masks (background -> ignored), same loop and budget as stage 3.

    `cfg.optim` and `cfg.pretrained` are used as given (the recipe's stage-3 optimiser);
    flips and loss are the benchmark's own, the same for every recipe. With `val`, the epoch with the best mIoU on its val split is kept, as stage 3 does
    (without a gate: there is no classifier). From-scratch DeepLabV3+ swings a lot between
    epochs in eval mode, so without the same selection the baseline would be a lottery.
    """
    torch.manual_seed(cfg.seed)
    model = build_segmenter(
        cfg.encoder, ds_masks.num_classes, decoder_channels=cfg.decoder_channels
    )
    if cfg.pretrained is not None:  # the loader `--seg-pretrained` goes through
        print(load_pretrained(model.net.encoder, cfg.pretrained).summary("fs encoder"))
    opt, base_lrs = make_optimizer(
        model, [model.net.decoder, model.net.segmentation_head], cfg.optim
    )
    steps = batch_count(len(items), cfg.batch_size)
    best: tuple[float, dict | None] = (-1.0, None)
    for epoch in range(cfg.epochs):
        model.train()
        gen = seeded(cfg.seed, 4, epoch)
        for step, idx in enumerate(epoch_batches(len(items), cfg.batch_size, gen)):
            schedule_lrs(opt, base_lrs, cfg.lr_schedule, epoch * steps + step, cfg.epochs * steps)
            gt = torch.from_numpy(np.stack([ds_masks.read_mask(items[i].mask) for i in idx]))
            gt = torch.where(gt >= ds_masks.num_classes, 255, gt).to(torch.uint8)
            images, (gt,) = augment(load_batch([items[i].image for i in idx]), [gt], gen, cfg.crop)
            loss = multilayer_pseudo_loss(
                model(to_input(images, torch.device("cpu"))), [gt], (1.0,)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is not None:
            score = validate(val, model, None, torch.device("cpu"), "val", cfg.batch_size)
            print(f"fully supervised epoch {epoch + 1}: val mIoU {score:.4f}", flush=True)
            if score > best[0]:
                best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best[1] is not None:
        model.load_state_dict(best[1])
    return model.eval()


def seg_predictor(
    segmenter: torch.nn.Module, classifier: torch.nn.Module | None = None, epsilon: float = 0.1
) -> Predictor:
    """What the slide path would write (`evaluate.module_predictor`): the segmenter's labels,
    gated by the classifier when one is given (Unclassified where it keeps no class)."""
    return module_predictor(segmenter, classifier, epsilon, torch.device("cpu"))


def score_head(
    ds: WsssDataset, split: str, predict: Predictor, limit: int, batch_size: int = 4
) -> ConfusionMatrix:
    """`score_split` on the first `limit` patches of `split` only (methods too slow for all)."""
    items = ds.mask_items(split)[:limit]
    cm = ConfusionMatrix(ds.num_classes)
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        gt = torch.from_numpy(np.stack([ds.read_mask(it.mask) for it in chunk]))
        (pred,) = predict(load_batch([it.image for it in chunk]), gt)
        cm.update(np.asarray(pred), gt.numpy())
    return cm


def exact_train_items(ds: WsssDataset, spec: SyntheticSpec, out: Path) -> list[MaskItem]:
    """The weak model's own training patches with their exact masks, written to `out`, so the
    fully supervised baseline trains on the same images. The generator draws every patch's
    label map but writes only its labels for train/: the draw is replayed from the spec's
    seed, and each replayed image must equal the saved one (a changed generator fails here
    instead of pairing images with wrong masks)."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed).spawn(3)[0])  # train's
    by_stem = {t.image.name.split("-[")[0]: t.image for t in ds.train_items()}
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(spec.n_train):
        labels = random_label_map(spec.size, rng, spec.background_prob)
        rgb = render_tissue(labels, rng)
        image = by_stem[f"syn{spec.seed}-train-{i:05d}"]
        with Image.open(image) as im:
            if not np.array_equal(np.asarray(im.convert("RGB")), rgb):
                raise RuntimeError(f"{image}: the replayed patch differs; the generator changed")
        mask = np.where(labels == BACKGROUND, len(CLASS_NAMES), labels).astype(np.uint8)
        path = out / f"{image.stem}.png"
        Image.fromarray(mask, mode="L").save(path)
        items.append(MaskItem(image, path))
    return items
