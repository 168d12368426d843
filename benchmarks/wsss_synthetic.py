"""WSSS on synthetic tissue over seeds, recipes and starts: pseudo masks per CAM method,
the weakly supervised segmenter, a fully supervised baseline, and the gap between them.

    .venv/bin/python benchmarks/wsss_synthetic.py [--seeds 0,1,2] [--recipes default,paper]
        [--starts scratch,pretrained] [--train 300] [--test 60] [--epochs 40] [--seg-epochs 8]
        [--heads cam,pcam,lficam] [--heads-recipes default] [--heads-starts scratch]
        [--scorecam-patches 16] [--pda-schedule paper|official]
        [--cls-output-stride 16] [--dropout 0.5] [--lr LR] [--threads 1] [--work DIR]
        [--fs-images same|other] [--full-from OTHER_WORK/results.json]

For each seed (its own synthetic data set and training seed), each recipe and each start
(random weights, or encoders pretrained once on another synthetic task by
`wsss_pretrain.py`), the stages run through the same configuration functions as
`wsi-segment train` (`TrainConfig` -> `classifier_config` / `segmenter_config`: recipe,
`--pretrained`, `--seg-pretrained`). Scored on the test split (mIoU, background ignored):
pseudo masks from the true patch labels per CAM method (CAM, Grad-CAM at each depth and
Score-CAM of the PDA classifier; CAM of the CAM and PCAM heads, LFI-CAM of the LFI-CAM head,
each head trained with the same recipe, in `--heads-recipes` x `--heads-starts` only), the
segmenter with and without the gate, and
DeepLabV3+ on exact masks of the same training patches (`--fs-images same`, the default; `other`:
as many patches of another data seed, as runs before 2026-11-24 evening did) for as many epochs
with the default recipe (once per seed and start, shared by both recipes; `--full-from` takes it
from another run beside this one that differs only in WSSS settings, e.g. `--dropout`). Both
segmenters keep their best epoch on the val split, and are scored on val too: decide settings
(budget, dropout, recipe) by the val rows, and read the test rows only for the result. Prints
one table of mean (min-max) over seeds; results.json in the work folder keeps every run and
lets an interrupted run go on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.wsss_parts import (  # noqa: E402
    cam_predictor,
    exact_train_items,
    score_head,
    seg_predictor,
    train_fully_supervised,
)
from benchmarks.wsss_pretrain import pretrain_encoder  # noqa: E402
from wsi_segment.models.classifier import PatchClassifier  # noqa: E402
from wsi_segment.models.heads import DEFAULT_DROPOUT, PDA_SCHEDULES  # noqa: E402
from wsi_segment.pipeline.training.datasets import MaskItem, WsssDataset, open_dataset  # noqa: E402
from wsi_segment.pipeline.training.evaluate import pseudo_predictor, score_split  # noqa: E402
from wsi_segment.pipeline.training.make_pseudo_masks import make_pseudo_masks  # noqa: E402
from wsi_segment.pipeline.training.train_classifier import train_classifier  # noqa: E402
from wsi_segment.pipeline.training.train_config import (  # noqa: E402
    TrainConfig,
    classifier_config,
    segmenter_config,
)
from wsi_segment.pipeline.training.train_segmenter import train_segmenter  # noqa: E402
from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset  # noqa: E402

CPU = torch.device("cpu")
#: Pseudo-mask method of each extra head: what that head exists for.
HEAD_METHODS = {"cam": "cam", "pcam": "cam", "lficam": "lficam"}
WSSS, FULL = "WSSS segmenter, gate", "fully supervised DeepLabV3+"
WSSS_VAL, FULL_VAL = f"{WSSS}, val (decide by)", f"{FULL}, val (decide by)"
#: gap rows: name -> (fully supervised row, weakly supervised row)
GAPS = {"gap (fully - weakly)": (FULL, WSSS), "gap on val (decide by)": (FULL_VAL, WSSS_VAL)}


def train_config(args: argparse.Namespace, data: Path, seed: int, recipe: str, weights: Path | None) -> TrainConfig:  # fmt: skip
    """The run as `wsi-segment train` would get it from its command line."""
    w = None if weights is None else str(weights)
    return TrainConfig(
        data=data,
        out=data.parent / "model",
        epochs=args.epochs,
        seg_epochs=args.seg_epochs,
        encoder=args.encoder,
        batch_size=args.batch_size,
        recipe=recipe,
        pretrained=w,
        seg_pretrained=w,
        lr=args.lr,
        seed=seed,
        decoder_channels=64,
        dropout=args.dropout,
        pda_schedule=args.pda_schedule,
        classifier_output_stride=args.cls_output_stride,
        lr_schedule=args.lr_schedule,
    )


def pseudo_rows(ds: WsssDataset, cfg: TrainConfig, work: Path, args: argparse.Namespace, heads: list[str]) -> tuple[dict[str, float], PatchClassifier]:  # fmt: skip
    """Stage 1 (PDA classifier and the extra heads) and its pseudo-mask mIoU per method."""
    k, bgr, out = ds.num_classes, ds.background_rule, {}
    ccfg = classifier_config(cfg)
    clf = train_classifier(ds, ccfg, work / "cls_pda", CPU)
    out["pseudo CAM (PDA head)"] = score_split(ds, "test", cam_predictor(clf, "cam", k, bgr))[0]
    layers = ("shallow", "mid", "deep")
    cms = score_split(ds, "test", pseudo_predictor(clf, k, layers, bgr), 3)
    for layer, cm in zip(layers, cms, strict=True):
        out[f"pseudo Grad-CAM {layer} (PDA head)"] = cm
    if args.scorecam_patches:
        sc = cam_predictor(clf, "scorecam", k, bgr)
        out["pseudo Score-CAM deep (PDA head)*"] = score_head(ds, "test", sc, args.scorecam_patches)
    for head in heads:
        other = train_classifier(
            ds, replace(ccfg, head=head, pda_schedule="paper"), work / f"cls_{head}", CPU
        )
        method = HEAD_METHODS[head]
        name = f"pseudo {'LFI-CAM' if method == 'lficam' else 'CAM'} ({head} head)"
        out[name] = score_split(ds, "test", cam_predictor(other, method, k, bgr))[0]
    return {name: 100 * cm.scores().miou for name, cm in out.items()}, clf


def run_config(ds: WsssDataset, cfg: TrainConfig, work: Path, args: argparse.Namespace, heads: list[str]) -> dict[str, float]:  # fmt: skip
    """One seed / recipe / start: pseudo masks per method, then the segmenter."""
    rows, clf = pseudo_rows(ds, cfg, work, args, heads)
    dirs = make_pseudo_masks(ds, clf, work / "pseudo", CPU)
    seg, _ = train_segmenter(ds, segmenter_config(cfg), dirs, work / "seg", CPU, clf)
    rows[WSSS] = 100 * score_split(ds, "test", seg_predictor(seg, clf))[0].scores().miou
    rows["WSSS segmenter, no gate"] = (
        100 * score_split(ds, "test", seg_predictor(seg))[0].scores().miou
    )
    rows[WSSS_VAL] = 100 * score_split(ds, "val", seg_predictor(seg, clf))[0].scores().miou
    return rows


def spread(values: list[float]) -> str:
    """mean (min-max) over seeds, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def table(results: dict[str, dict[str, float]], configs: list[str], seeds: list[int]) -> str:
    """Markdown: one row per measure, one column per recipe / start, mean (min-max) over seeds."""
    names: list[str] = []
    for key in results:
        names += [n for n in results[key] if n not in names and n != "seconds"]
    lines = ["| measure | " + " | ".join(configs) + " |", "|---" * (1 + len(configs)) + "|"]
    for name in [*names, *GAPS, "seeds done"]:
        cells = []
        for c in configs:
            runs = [(s, results.get(f"{c} seed {s}")) for s in seeds]
            done = [(s, r) for s, r in runs if r is not None]
            if name == "seeds done":
                cells.append(",".join(str(s) for s, _ in done) or "-")
                continue
            if name in (FULL, FULL_VAL) or name in GAPS:
                full, weak = GAPS.get(name, (name, ""))
                start = c.split(" / ")[1]
                fulls = {s: results.get(f"full / {start} seed {s}", {}).get(full) for s, _ in done}
                if name in GAPS:
                    vals = [
                        f - r[weak] for s, r in done if (f := fulls[s]) is not None and weak in r
                    ]
                else:
                    vals = [v for v in fulls.values() if v is not None]
            else:
                vals = [r[name] for _, r in done if name in r]
            cells.append(spread(vals) if vals else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_data(args: argparse.Namespace, work: Path, seed: int) -> tuple[WsssDataset, WsssDataset, list[MaskItem]]:  # fmt: skip
    """The seed's weakly labelled set, and the fully supervised baseline's training patches
    with exact masks (and the set that reads them): the same patches (`--fs-images same`), or
    as many of another data seed (`other`)."""
    data_seed = args.data_seed + seed
    spec = SyntheticSpec(args.train, 30, args.test, args.size, data_seed)
    ds = open_dataset(make_synthetic_dataset(work / "data", spec))
    if args.fs_images == "same":
        return ds, ds, exact_train_items(ds, spec, work / "train-masks")
    fs_root = make_synthetic_dataset(
        work / "fs", SyntheticSpec(1, args.train, 1, args.size, data_seed + 1000)
    )
    fs = open_dataset(fs_root)
    return ds, fs, fs.mask_items("val")


#: Options the fully supervised baseline depends on: runs equal in these share it.
FULL_ARGS = ("train", "test", "size", "batch_size", "seg_epochs", "lr", "lr_schedule", "encoder",
             "data_seed", "pretrain_patches", "pretrain_epochs", "pretrain_size", "fs_images")  # fmt: skip
#: What `--fs-images` was in runs whose results.json predates the option.
FS_IMAGES_BEFORE = "other"


def shared_full(path: Path | None, args: argparse.Namespace, key: str) -> dict[str, float] | None:
    """The baseline row `key` of another run's results.json (`--full-from`), read afresh each
    time so a run beside this one can still be filling it; None when it has no such row."""
    if path is None or not path.is_file():
        return None
    doc = json.loads(path.read_text())
    their = {"fs_images": FS_IMAGES_BEFORE} | doc["args"]
    differ = [a for a in FULL_ARGS if their.get(a) != getattr(args, a)]
    if differ:
        raise SystemExit(f"error: {path}: its run differs in {differ}; drop --full-from")
    row: dict[str, float] | None = doc["results"].get(key)
    return row


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    names = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    p.add_argument("--seeds", type=ints, default=[0, 1, 2])
    p.add_argument("--recipes", type=names, default=["default", "paper"])
    p.add_argument("--starts", type=names, default=["scratch", "pretrained"])
    p.add_argument("--heads", type=names, default=["cam", "pcam", "lficam"])
    p.add_argument(
        "--heads-recipes", type=names, default=["default"], help="recipes that train --heads"
    )
    p.add_argument(
        "--heads-starts", type=names, default=["scratch"], help="starts that train --heads"
    )
    p.add_argument("--scorecam-patches", type=int, default=16, help="0: no Score-CAM")
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--test", type=int, default=60)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=40, help="classifier epochs")
    p.add_argument("--seg-epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="replaces both recipes' base lr")
    p.add_argument("--lr-schedule", default="poly", choices=("poly", "constant"))
    p.add_argument("--dropout", type=float, default=DEFAULT_DROPOUT)
    p.add_argument("--pda-schedule", default="paper", choices=PDA_SCHEDULES)
    p.add_argument("--cls-output-stride", type=int, default=16, choices=(8, 16, 32))
    p.add_argument("--encoder", default="resnet10t")
    p.add_argument("--pretrain-patches", type=int, default=600)
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--pretrain-size", type=int, default=112)
    p.add_argument("--data-seed", type=int, default=11, help="data of seed s: data seed + s")
    p.add_argument(
        "--fs-images",
        choices=("same", "other"),
        default="same",
        help="the fully supervised baseline trains on the weak model's own patches with exact "
        "masks (same), or on as many patches of data seed + 1000 (other: runs before this option)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument(
        "--full-from",
        type=Path,
        default=None,
        help="results.json of a run with the same data and baseline settings: take its fully "
        "supervised rows (when it has them) instead of training them again",
    )
    args = p.parse_args()
    for head in args.heads:
        if head not in HEAD_METHODS:
            p.error(f"--heads: {head!r} is not one of {sorted(HEAD_METHODS)}")
    return args


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    work: Path = args.work or Path(tempfile.mkdtemp(prefix="wsss-bench-"))
    store = work / "results.json"
    before = json.loads(store.read_text()) if store.is_file() else {"args": {}, "results": {}}
    was = before["args"].get("fs_images", FS_IMAGES_BEFORE if before["results"] else None)
    if was not in (None, args.fs_images):
        raise SystemExit(
            f"error: {store}: its baselines used --fs-images {was}; give that, or another --work"
        )
    results: dict[str, dict[str, float]] = before["results"]
    weights = None
    if "pretrained" in args.starts:
        weights = pretrain_encoder(
            args.encoder,
            work / "pretrained" / f"{args.encoder}-textures-{args.pretrain_size}px-"
            f"{args.pretrain_patches}x{args.pretrain_epochs}.safetensors",
            n=args.pretrain_patches,
            size=args.pretrain_size,
            epochs=args.pretrain_epochs,
        )
    configs = [f"{r} / {s}" for s in args.starts for r in args.recipes]
    extra = {(r, s) for r in args.heads_recipes for s in args.heads_starts}

    def save(key: str, rows: dict[str, float], started: float | None) -> None:
        """Record `rows` (with their seconds since `started`; None: they carry their own)."""
        results[key] = rows if started is None else rows | {"seconds": round(time.time() - started, 1)}  # fmt: skip
        store.write_text(json.dumps({"args": vars(args) | {"work": str(work)}, "results": results}, indent=1, default=str))  # fmt: skip
        print(f"{key}: " + ", ".join(f"{n} {v:.1f}" for n, v in results[key].items()), flush=True)

    data = {seed: seed_data(args, work / f"seed{seed}", seed) for seed in args.seeds}
    # config-major: a run cut short leaves whole columns over every seed
    for start in args.starts:
        w = weights if start == "pretrained" else None
        for recipe in args.recipes:
            for seed in args.seeds:
                ds, fs, fs_items = data[seed]
                key = f"{recipe} / {start} seed {seed}"
                if key not in results:
                    t = time.time()
                    cfg = train_config(args, ds.root, seed, recipe, w)
                    heads = args.heads if (recipe, start) in extra else []
                    run = work / f"seed{seed}" / f"{recipe}-{start}"
                    save(key, run_config(ds, cfg, run, args, heads), t)
                key = f"full / {start} seed {seed}"  # after: a run beside may have it by now
                if key not in results and (row := shared_full(args.full_from, args, key)):
                    save(key, row, None)
                elif key not in results:
                    t = time.time()
                    scfg = segmenter_config(train_config(args, ds.root, seed, "default", w))
                    sfs = train_fully_supervised(fs, fs_items, scfg, val=ds)
                    miou = score_split(ds, "test", seg_predictor(sfs))[0].scores().miou
                    val = score_split(ds, "val", seg_predictor(sfs))[0].scores().miou
                    save(key, {FULL: 100 * miou, FULL_VAL: 100 * val}, t)
    print()
    print(table(results, configs, args.seeds))
    print(
        f"\n{args.train} train / {args.test} test patches of {args.size} px per seed, "
        f"batch {args.batch_size}, classifier {args.epochs} epochs, segmenters "
        f"{args.seg_epochs} epochs, encoder {args.encoder} (classifier output stride {args.cls_output_stride}, PDA schedule "
        f"{args.pda_schedule}), lr schedule {args.lr_schedule}, dropout {args.dropout}; fully "
        f"supervised: default recipe, on {'the same patches' if args.fs_images == 'same' else 'patches of data seed + 1000'} "
        "with exact masks, one per seed and start, shared by both recipes; both segmenters keep "
        "their best val epoch: decide by the val rows; heads "
        f"{','.join(args.heads)} trained in {sorted(extra)} only; "
        f"* Score-CAM on the first {args.scorecam_patches} test patches only; "
        f"{args.threads} threads, {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
