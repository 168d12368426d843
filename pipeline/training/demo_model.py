"""Regenerate the shipped demo model: synthetic data -> `wsi-segment train` -> models/demo_model/.

`python -m wsi_segment.pipeline.training.demo_model` (or `make demo-model`). Light encoders (resnet10t for both
networks), fp16 weights (~20 MB), one CPU thread, ~15 CPU-minutes. The
model is trained only on synthetic H&E-like textures (synthetic.slides.render_tissue), and its
model.json says so: it demonstrates the pipeline end to end, it is not a diagnostic model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from wsi_segment.models.bundle import demo_model_dir, load_model
from wsi_segment.models.meta import read_model_json
from wsi_segment.pipeline.training.evaluate import evaluate
from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset

DEMO_SPEC = SyntheticSpec(n_train=800, n_val=60, n_test=100, size=112, seed=2026)
TRAIN_ARGS = [
    "--encoder", "resnet10t",
    "--seg-encoder", "resnet10t",
    "--decoder-channels", "64",
    "--head", "pda",
    "--dropout", "0",  # the shipped weights were trained without classifier dropout
    "--epochs", "8",
    "--seg-epochs", "6",
    "--batch-size", "16",
    "--lr", "0.002",
    "--seed", "0",
    "--device", "cpu",
    "--threads", "1",
    "--fp16",
    "--name", "demo-synthetic-luad-resnet10t",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--work", type=Path, default=Path("/tmp/wsi-segment-demo-model"), help="scratch folder"
    )
    p.add_argument("--out", type=Path, default=demo_model_dir(), help="where the model goes")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the machine is usually shared; the training runs one thread too
    data = make_synthetic_dataset(args.work / "data", DEMO_SPEC, progress=sys.stderr.isatty())
    trained = args.work / "model"
    cmd = [
        sys.executable,
        "-m",
        "wsi_segment.flows.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(trained),
        *TRAIN_ARGS,
    ]
    print("running:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    scores = {
        split: evaluate(data, trained, split=split, device="cpu", progress=False)
        for split in ("val", "test")
    }
    doc, _ = read_model_json(trained)
    doc["provenance"]["training_data"] = (
        f"SYNTHETIC ONLY: {DEMO_SPEC.n_train} procedurally rendered {DEMO_SPEC.size} px H&E-like patches "
        "(synthetic.dataset, textures of synthetic.slides.render_tissue) with patch-level labels; "
        "no real tissue was used. A demonstration model, not for diagnosis or research results."
    )
    doc["provenance"]["synthetic_spec"] = DEMO_SPEC.__dict__
    doc["provenance"]["regenerate"] = (
        "make demo-model  (python -m wsi_segment.pipeline.training.demo_model)"
    )
    doc["provenance"]["evaluation_synthetic"] = scores
    (trained / "model.json").write_text(json.dumps(doc, indent=2) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("model.json", "model.safetensors"):
        shutil.copy2(trained / name, args.out / name)
    load_model(args.out)  # refuse to finish with a folder that does not load
    size = sum((args.out / n).stat().st_size for n in ("model.json", "model.safetensors")) / 1e6
    t = scores["test"]
    print(f"demo model -> {args.out} ({size:.1f} MB); synthetic test mIoU {t['miou']:.4f} "
          f"(pseudo deep {t.get('pseudo_masks', {}).get('deep', {}).get('miou')})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
