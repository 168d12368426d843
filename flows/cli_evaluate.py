"""`wsi-segment evaluate`: mIoU / FwIoU / accuracy of a model folder on a dataset split."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on a dataset split with pixel masks",
        description=(
            "One confusion matrix over the split, background/exclude pixels ignored (the paper's "
            "metric). Also scores the classifier's multi-layer pseudo masks when it can make them."
        ),
    )
    p.add_argument(
        "--data", required=True, type=Path, help="dataset folder with val/ and test/ masks"
    )
    p.add_argument(
        "--model", required=True, type=Path, help="model folder (model.json + model.safetensors)"
    )
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--no-gate", action="store_true", help="do not gate classes by the classifier")
    p.add_argument("--no-pseudo", action="store_true", help="skip the pseudo-mask evaluation")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)
    return p


def _fmt(v: float | None) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"


def format_table(result: dict[str, Any]) -> str:
    """Per-class IoU and the summary scores (percent), then pseudo masks per depth if any."""
    classes = list(result["iou"])
    lines = [
        f"{'':>14}" + "".join(f"{c:>8}" for c in classes) + f"{'mIoU':>8}{'FwIoU':>8}{'Acc':>8}"
    ]

    def row(name: str, r: dict[str, Any]) -> str:
        return (
            f"{name:>14}"
            + "".join(f"{_fmt(r['iou'][c]):>8}" for c in classes)
            + f"{_fmt(r['miou']):>8}{_fmt(r['fwiou']):>8}{_fmt(r['acc']):>8}"
        )

    lines.append(row("segmentation", result))
    for depth, r in result.get("pseudo_masks", {}).items():
        lines.append(row(f"pseudo {depth}", r))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from wsi_segment.pipeline.training.evaluate import evaluate

    result = evaluate(
        args.data,
        args.model,
        split=args.split,
        gate=not args.no_gate,
        pseudo=not args.no_pseudo,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0
