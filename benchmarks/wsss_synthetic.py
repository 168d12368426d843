"""WSSS on synthetic tissue: pseudo-mask quality per CAM method, final mIoU, and a fully supervised baseline.

    .venv/bin/python benchmarks/wsss_synthetic.py [--train 400] [--epochs 6] [--seg-epochs N]
        [--size 112] [--cls-output-stride 16] [--lr-schedule poly] [--threads 2]
        [--pda-schedule paper|official] [--dropout 0.5]

Prints one table (mIoU on the synthetic test split, background ignored):
pseudo masks from CAM, Grad-CAM and PDA + Grad-CAM at each depth (made from the true patch
labels, as stage 2 does), the segmenter trained on the multi-layer PDA pseudo masks with and
without the classification gate, and DeepLabV3+ trained on exact pixel masks of as many
patches for as many epochs (same encoder, same budget). Sized to run in < ~30 min on 2 cores.
It also prints how the gate treats the test patches: present classes the classifier gates
(y_k <= epsilon: those pixels are lost) and absent classes it lets through.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsi_segment.models.background import background_mask
from wsi_segment.models.cams import activation_maps
from wsi_segment.models.classifier import PatchClassifier
from wsi_segment.models.heads import DEFAULT_DROPOUT, PDA_SCHEDULES
from wsi_segment.models.pseudo_masks import label_from_maps
from wsi_segment.models.segmenter import build_segmenter, multilayer_pseudo_loss
from wsi_segment.pipeline.training.datasets import (
    MaskItem,
    WsssDataset,
    augment,
    batch_count,
    epoch_batches,
    load_batch,
    open_dataset,
)
from wsi_segment.pipeline.training.evaluate import (
    GateCheck,
    Predictor,
    module_predictor,
    present_labels,
    pseudo_predictor,
    score_split,
)
from wsi_segment.pipeline.training.make_pseudo_masks import make_pseudo_masks
from wsi_segment.pipeline.training.recipes import Optim, make_optimizer
from wsi_segment.pipeline.training.train_classifier import (
    ClassifierConfig,
    schedule_lrs,
    seeded,
    to_input,
    train_classifier,
)
from wsi_segment.pipeline.training.train_segmenter import SegmenterConfig, train_segmenter, validate
from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset


def cam_predictor(
    classifier: PatchClassifier, method: str, k: int, use_background: bool
) -> Predictor:
    """Single-layer pseudo masks from `method` at the deepest tap, with the true labels."""

    def predict(images: torch.Tensor, gt: torch.Tensor) -> list[torch.Tensor]:
        x = to_input(images, torch.device("cpu"))
        maps = activation_maps(method, classifier, x, "deep", normalise="none")
        bg = background_mask(images) if use_background else None
        return [label_from_maps(maps, present_labels(gt, k) > 0.5, bg)]

    return predict


def train_fully_supervised(
    ds_masks: WsssDataset,
    items: list[MaskItem],
    cfg: SegmenterConfig,
    val: WsssDataset | None = None,
) -> torch.nn.Module:
    """DeepLabV3+ on exact masks (background -> ignored), same loop and budget as stage 3.

    With `val`, the epoch with the best mIoU on its val split is kept, as stage 3 does
    (without a gate: there is no classifier). From-scratch DeepLabV3+ swings a lot between
    epochs in eval mode, so without the same selection the baseline would be a lottery.
    """
    torch.manual_seed(cfg.seed)
    model = build_segmenter(
        cfg.encoder, ds_masks.num_classes, decoder_channels=cfg.decoder_channels
    )
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


@torch.no_grad()
def gate_report(ds: WsssDataset, classifier: torch.nn.Module, split: str, epsilon: float) -> dict:
    """How the gate treats a split: present classes gated (y <= eps), absent classes kept."""
    check = GateCheck(ds.num_classes, epsilon)
    for i in range(0, len(items := ds.mask_items(split)), 16):
        chunk = items[i : i + 16]
        x = to_input(load_batch([it.image for it in chunk]), torch.device("cpu"))
        gt = torch.from_numpy(np.stack([ds.read_mask(it.mask) for it in chunk]))
        check.update(torch.sigmoid(classifier(x)), gt)
    return check.as_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--test", type=int, default=80)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=6, help="classifier epochs")
    p.add_argument(
        "--seg-epochs", type=int, default=None, help="segmenter epochs (default --epochs)"
    )
    p.add_argument("--cls-output-stride", type=int, default=16, choices=(8, 16, 32))
    p.add_argument("--lr-schedule", default="poly", choices=("poly", "constant"))
    p.add_argument(
        "--pda-schedule",
        default="paper",
        choices=PDA_SCHEDULES,
        help="PDA schedule of the PDA classifier (run once per schedule to compare them)",
    )
    p.add_argument("--dropout", type=float, default=DEFAULT_DROPOUT, help="classifier dropout")
    p.add_argument("--encoder", default="resnet10t")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="wsss-bench-"))
    cpu = torch.device("cpu")
    spec = SyntheticSpec(args.train, 30, args.test, args.size, args.seed)
    ds = open_dataset(make_synthetic_dataset(work / "data", spec))
    # same distribution, but with exact masks for the fully supervised baseline
    fs = open_dataset(
        make_synthetic_dataset(
            work / "fs", SyntheticSpec(1, args.train, 1, args.size, args.seed + 1)
        )
    )
    k, rows = ds.num_classes, []

    def add(name: str, cms) -> None:
        for suffix, cm in cms:
            s = cm.scores()
            rows.append(
                {
                    "what": f"{name}{suffix}",
                    "miou": s.miou,
                    "iou": dict(zip(ds.classes, s.iou.tolist(), strict=True)),
                }
            )
            print(
                f"{rows[-1]['what']:<40} mIoU {s.miou:.4f}  ({time.time() - t0:.0f} s)", flush=True
            )

    cls_cfg = ClassifierConfig(
        encoder=args.encoder,
        output_stride=args.cls_output_stride,
        epochs=args.epochs,
        batch_size=16,
        optim=Optim(lr=2e-3),
        lr_schedule=args.lr_schedule,
        seed=0,
        dropout=args.dropout,
        pda_schedule=args.pda_schedule,
    )
    cam_cfg = ClassifierConfig(**{**cls_cfg.__dict__, "head": "cam", "pda_schedule": "paper"})
    clf_cam = train_classifier(ds, cam_cfg, work / "cls_cam", cpu)
    clf_pda = train_classifier(ds, cls_cfg, work / "cls_pda", cpu)
    bgr = ds.background_rule
    add(
        "pseudo CAM (CAM head)",
        [("", score_split(ds, "test", cam_predictor(clf_cam, "cam", k, bgr))[0])],
    )
    add(
        "pseudo Grad-CAM (CAM head) deep",
        [("", score_split(ds, "test", cam_predictor(clf_cam, "gradcam", k, bgr))[0])],
    )
    layers = ("shallow", "mid", "deep")
    cms = score_split(ds, "test", pseudo_predictor(clf_pda, k, layers, bgr), 3)
    add("pseudo PDA + Grad-CAM", [(f" {layer}", cm) for layer, cm in zip(layers, cms, strict=True)])

    dirs = make_pseudo_masks(ds, clf_pda, work / "pseudo", cpu)
    scfg = SegmenterConfig(
        encoder=f"tu-{args.encoder}",
        epochs=args.seg_epochs or args.epochs,
        batch_size=16,
        optim=Optim(lr=2e-3),
        decoder_channels=64,
        lr_schedule=args.lr_schedule,
    )
    seg, _ = train_segmenter(ds, scfg, dirs, work / "seg_multi", cpu, clf_pda)
    gates = {s: gate_report(ds, clf_pda, s, scfg.gate_epsilon) for s in ("val", "test")}
    for split, g in gates.items():
        print(
            f"gate on {split}: {g['present_gated']}/{g['present_classes']} present classes gated "
            f"({100 * g['tissue_pixels_gated']:.1f} % of tissue pixels), "
            f"{g['absent_kept']}/{g['absent_classes']} absent classes kept (eps {g['epsilon']})",
            flush=True,
        )
    add(
        "WSSS segmenter multi-layer, gate",
        [("", score_split(ds, "test", seg_predictor(seg, clf_pda))[0])],
    )
    add(
        "WSSS segmenter multi-layer, no gate",
        [("", score_split(ds, "test", seg_predictor(seg))[0])],
    )
    sfs = train_fully_supervised(fs, fs.mask_items("val"), scfg, val=ds)
    add("fully supervised DeepLabV3+", [("", score_split(ds, "test", seg_predictor(sfs))[0])])
    print()
    print(f"| {'method':<40} | mIoU | " + " | ".join(ds.classes) + " |")
    print("|" + "---|" * (2 + k))
    for r in rows:
        print(
            f"| {r['what']:<40} | {100 * r['miou']:.1f} | "
            + " | ".join(f"{100 * v:.1f}" for v in r["iou"].values())
            + " |"
        )
    print(f"\n{args.train} train / {args.test} test patches of {args.size} px, classifier "
          f"{args.epochs} epochs (output stride {args.cls_output_stride}), segmenters "
          f"{scfg.epochs} epochs, lr schedule {args.lr_schedule}, PDA schedule "
          f"{args.pda_schedule}, dropout {args.dropout}, encoder {args.encoder}, "
          f"{args.threads} threads, {time.time() - t0:.0f} s")  # fmt: skip
    (work / "results.json").write_text(
        json.dumps(
            {"args": vars(args) | {"work": str(work)}, "rows": rows, "gate": gates}, indent=1
        )
    )


if __name__ == "__main__":
    main()
