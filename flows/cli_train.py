"""`wsi-segment train`: the three training stages on a WSSS dataset folder -> a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.models.cam_methods import (
    CAM_METHODS,
    DEFAULT_CAM_METHOD,
    pseudo_mask_methods,
)
from wsi_segment.models.head_names import HEAD_NAMES

if TYPE_CHECKING:
    from wsi_segment.pipeline.training.train_config import TrainConfig


def cam_method_help() -> str:
    """`--cam-method`'s help, one clause per method of the registry that makes pseudo masks."""
    clauses = []
    for name in pseudo_mask_methods():
        spec = CAM_METHODS[name]
        needs = f"; needs --head {spec.head}" if spec.head else ""
        default = "; the default" if name == DEFAULT_CAM_METHOD else ""
        clauses.append(f"{name}: {spec.title} ({spec.cost}{needs}{default})")
    return (
        "stage-2 pseudo masks from: "
        + "; ".join(clauses)
        + ". A method read at the deepest features only gives three equal masks. PCAM is a "
        "head: --head pcam, with any method that needs no head; --head lficam-ref is LFI-CAM's "
        "reference head"
    )


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train classifier -> pseudo masks -> segmenter from patch-level labels",
        description=(
            "Weakly supervised training (Han et al. 2022): stage 1 patch classifier, stage 2 "
            "multi-layer pseudo masks, stage 3 DeepLabV3+; writes a model folder usable by "
            "`wsi-segment SLIDE --model MODEL_DIR`. Interrupted runs resume from the last epoch."
        ),
    )
    # group by group, in the order `--help` lists them
    add_stage_options(p)
    add_recipe_options(p)
    add_optimizer_options(p)
    add_segmenter_training_options(p)
    add_run_and_output_options(p)
    add_schedule_options(p)
    p.set_defaults(run=run)
    return p


def add_stage_options(p: argparse.ArgumentParser) -> None:
    """The dataset, the model folder, and what the stages train: epochs, encoders, batch,
    stage-1 head, stage-2 pseudo-mask method, device."""
    p.add_argument(
        "--data", required=True, type=Path, help="dataset folder (LUAD-HistoSeg / BCSS-WSSS layout)"
    )
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--epochs", type=int, default=20, help="stage-1 classifier epochs (default 20)")
    p.add_argument(
        "--seg-epochs",
        type=int,
        default=None,
        help="stage-3 segmenter epochs (default: --epochs; --recipe official: 30)",
    )
    p.add_argument(
        "--encoder", default="resnet18", help="classifier backbone, timm name (default resnet18)"
    )
    p.add_argument(
        "--seg-encoder", default=None, help="segmenter encoder (default: same as --encoder)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 16; --recipe official: 20")
    p.add_argument("--head", choices=HEAD_NAMES, default=HEAD_NAMES[0])
    p.add_argument(
        "--cam-method",
        choices=pseudo_mask_methods(),
        default=DEFAULT_CAM_METHOD,
        help=cam_method_help(),
    )
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:N")


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The recipe, and the weights the encoders start from (which pick it when not given)."""
    p.add_argument(
        "--recipe",
        choices=("default", "paper", "official"),
        default=None,
        help="default: AdamW lr 1e-3, wd 1e-4, BatchNorm training; paper: the official code's "
        "SGD lr 0.01 (2x biases, 10x new layers), momentum 0.9, wd 5e-4, BatchNorm frozen in "
        "stage 1, stage-3 blur, official loss, ungated validation; official: the official "
        "code's training as far as this architecture allows: paper with the stage-1 momentum "
        "5e-4 it really trains with, and --batch-size 20 --seg-epochs 30 --pda-schedule "
        "official --classifier-output-stride 8 unless given (default, per stage: paper where "
        "the encoder starts from --pretrained / --seg-pretrained weights, else default)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="classifier encoder weights: a .safetensors file, a PyTorch state dict (read with "
        "weights_only=True), or a timm / Hugging Face name (needs the machine online)",
    )
    p.add_argument(
        "--seg-pretrained",
        default=None,
        help="segmenter (DeepLabV3+) encoder weights, as --pretrained; a file holding a whole "
        "smp DeepLabV3+ state dict starts its encoder, ASPP and decoder (and its last layer "
        "when the class count agrees)",
    )


def add_optimizer_options(p: argparse.ArgumentParser) -> None:
    """Single optimizer settings that replace the recipe's."""
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default: recipe's)")
    p.add_argument(
        "--weight-decay", type=float, default=None, help="weight decay (default: recipe's)"
    )
    p.add_argument(
        "--bias-lr-mult", type=float, default=None, help="lr multiplier of biases (recipe's)"
    )
    p.add_argument(
        "--head-lr-mult",
        type=float,
        default=None,
        help="lr multiplier of the new layers: classifier head, DeepLabV3+ decoder (recipe's)",
    )
    p.add_argument(
        "--bias-weight-decay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight decay on biases too (default: recipe's; paper: none on stage-1 biases)",
    )
    p.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="SGD momentum in both stages (default: recipe's; AdamW ignores it)",
    )


def add_segmenter_training_options(p: argparse.ArgumentParser) -> None:
    """Single stage-3 settings that replace the recipe's: augmentation, loss, validation."""
    p.add_argument(
        "--seg-blur",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stage-3 Gaussian blur, p 0.5, radius U(0, 1) (default: recipe's)",
    )
    p.add_argument(
        "--seg-vflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stage-3 vertical flips besides horizontal ones (default: recipe's)",
    )
    p.add_argument(
        "--seg-loss",
        choices=("ours", "official"),
        default=None,
        help="stage-3 loss scale: ours (labelled pixels) or official (all pixels, / batch size)",
    )
    p.add_argument(
        "--val-gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stage-3 validation through the classification gate (default: recipe's)",
    )
    p.add_argument(
        "--crop", type=int, default=None, help="random training crop in px (default: full patch)"
    )


def add_run_and_output_options(p: argparse.ArgumentParser) -> None:
    """The run's seed and threads, where its checkpoints go, and what the model folder
    records (name, fp16 weights, decoder width, mpp)."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="checkpoints and pseudo masks (default OUT.work)",
    )
    p.add_argument("--name", default=None, help="model name in model.json (default: folder name)")
    p.add_argument("--fp16", action="store_true", help="store the final weights as float16")
    p.add_argument("--decoder-channels", type=int, default=256, help="DeepLabV3+ decoder width")
    p.add_argument(
        "--mpp",
        type=float,
        default=1.0,
        help="um/px of the patches (model.json; default 1.0 = 10x)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all)")


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    """The lr and PDA schedules and the stage-1 network settings the official code picks
    (output stride, dropout), each replaceable on its own."""
    p.add_argument(
        "--lr-schedule",
        choices=("poly", "constant"),
        default="poly",
        help="poly: lr * (1 - step/steps)^0.9 per step, as the official code (default); constant",
    )
    p.add_argument(
        "--classifier-output-stride",
        type=int,
        choices=(8, 16, 32),
        default=None,
        help="stage-1 backbone output stride: 8 gives finer CAMs at ~3x the compute (default "
        "16; --recipe official: 8)",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=0.5,
        help="classifier channel dropout in training, as the official code (default 0.5)",
    )
    p.add_argument(
        "--pda-schedule",
        choices=("paper", "official"),
        default=None,
        help="PDA schedule: paper (sigma 0.985, floor 0.65, 3 warm-up epochs, no decay during "
        "warm-up; default) or official (the official code's: sigma 0.98, decays from epoch 0; "
        "--recipe official's)",
    )
    p.add_argument("--pda-sigma", type=float, default=None, help="replace the schedule's sigma")
    p.add_argument("--pda-floor", type=float, default=None, help="replace the schedule's floor")
    p.add_argument(
        "--pda-warmup", type=int, default=None, help="replace the schedule's warm-up epochs"
    )


def run(args: argparse.Namespace) -> int:
    """Train; a stop Python drops while it trains (a signal landing in a finaliser) stops it
    at the next step all the same (`flows.dropped_stops`), the work folder kept to resume."""
    from wsi_segment.flows.dropped_stops import stop_on_dropped
    from wsi_segment.pipeline.training.train import train

    cfg = config_from_args(args)
    with stop_on_dropped() as stop:
        out = train(cfg, stop)
    print(f"model written to {out}")
    return 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The command line as a TrainConfig; options left out keep TrainConfig's defaults,
    the same the Prefect train flow gets."""
    from wsi_segment.pipeline.training.train import TrainConfig

    return TrainConfig(
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        seg_epochs=args.seg_epochs,
        encoder=args.encoder,
        seg_encoder=args.seg_encoder,
        batch_size=args.batch_size,
        head=args.head,
        device=args.device,
        recipe=args.recipe,
        pretrained=args.pretrained,
        seg_pretrained=args.seg_pretrained,
        lr=args.lr,
        weight_decay=args.weight_decay,
        bias_lr_mult=args.bias_lr_mult,
        head_lr_mult=args.head_lr_mult,
        bias_weight_decay=args.bias_weight_decay,
        momentum=args.momentum,
        seg_blur=args.seg_blur,
        seg_vflip=args.seg_vflip,
        seg_loss=args.seg_loss,
        val_gate=args.val_gate,
        crop=args.crop,
        seed=args.seed,
        work_dir=args.work_dir,
        name=args.name,
        fp16=args.fp16,
        decoder_channels=args.decoder_channels,
        threads=args.threads,
        mpp=args.mpp,
        lr_schedule=args.lr_schedule,
        classifier_output_stride=args.classifier_output_stride,
        cam_method=args.cam_method,
        dropout=args.dropout,
        pda_schedule=args.pda_schedule,
        pda_sigma=args.pda_sigma,
        pda_floor=args.pda_floor,
        pda_warmup=args.pda_warmup,
    )
