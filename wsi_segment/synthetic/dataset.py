"""A synthetic WSSS dataset in the LUAD-HistoSeg layout, for tests, benchmarks and the demo model.

Label maps are smooth random partitions of a patch into 1-3 tissue classes (plus, sometimes,
white background); the slide layer's `render_tissue` paints them. Training patches keep only
their patch-level labels (in the file name, exactly the classes present); val/test patches
get exact P-mode masks. Everything follows from one seed, so the dataset is reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from wsi_segment.synthetic.slides import CLASS_COLORS, CLASS_NAMES, render_tissue
from wsi_segment.synthetic.textures import CLASS_TITLES

BACKGROUND = 255  # background value of render_tissue label maps
BACKGROUND_COLOR = (255, 255, 255)


@dataclass(frozen=True)
class SyntheticSpec:
    """How many patches per split, their size, and the seed."""

    n_train: int = 400
    n_val: int = 40
    n_test: int = 60
    size: int = 224
    seed: int = 0
    background_prob: float = 0.3


def random_label_map(
    size: int, rng: np.random.Generator, background_prob: float = 0.3
) -> np.ndarray:
    """Smooth random regions of 1-3 classes (0..K-1), with white background (255) at times."""
    k = len(CLASS_NAMES)
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    classes = rng.choice(k, size=n, replace=False)
    grid = int(rng.integers(2, 5))
    fields = [
        ndimage.zoom(rng.normal(size=(grid, grid)), size / grid, order=3)[:size, :size]
        for _ in classes
    ]
    labels: np.ndarray = classes[np.argmax(np.stack(fields), axis=0)].astype(np.uint8)
    if rng.random() < background_prob:
        bg = ndimage.zoom(rng.normal(size=(grid + 1, grid + 1)), size / (grid + 1), order=3)[
            :size, :size
        ]
        labels[bg > np.quantile(bg, 1 - rng.uniform(0.05, 0.3))] = BACKGROUND
    return labels


def _palette() -> list[int]:
    flat = [v for c in (*CLASS_COLORS, BACKGROUND_COLOR) for v in c]
    return flat + [0] * (768 - len(flat))


def _present(labels: np.ndarray) -> list[int]:
    return [int(c in labels) for c in range(len(CLASS_NAMES))]


def make_synthetic_dataset(
    root: str | Path, spec: SyntheticSpec = SyntheticSpec(), progress: bool = False
) -> Path:
    """Write `train/`, `val/{img,mask}/`, `test/{img,mask}/` and `dataset.json` under `root`.

    Idempotent: a folder whose dataset.json records the same spec is left as is.
    """
    root = Path(root)
    meta = {
        "classes": list(CLASS_NAMES),
        "class_titles": dict(CLASS_TITLES),
        "colors": [list(c) for c in CLASS_COLORS],
        "background_color": list(BACKGROUND_COLOR),
        "background_rule": True,
        "layout": "luad",
        "source": "synthetic (synthetic.dataset, textures from synthetic.slides.render_tissue)",
        "spec": spec.__dict__,
    }
    meta_file = root / "dataset.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("spec") == spec.__dict__:
        return root
    from tqdm import tqdm

    ss = np.random.SeedSequence(spec.seed)
    bar = tqdm(
        total=spec.n_train + spec.n_val + spec.n_test, desc="synthetic data", disable=not progress
    )
    for split, n, split_seed in zip(
        ("train", "val", "test"), (spec.n_train, spec.n_val, spec.n_test), ss.spawn(3), strict=True
    ):
        rng = np.random.default_rng(split_seed)
        out = root / split if split == "train" else root / split / "img"
        out.mkdir(parents=True, exist_ok=True)
        if split != "train":
            (root / split / "mask").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            labels = random_label_map(spec.size, rng, spec.background_prob)
            rgb = render_tissue(labels, rng)
            stem = f"syn{spec.seed}-{split}-{i:05d}"
            if split == "train":
                tag = " ".join(map(str, _present(labels)))
                Image.fromarray(rgb).save(out / f"{stem}-[{tag}].png")
            else:
                Image.fromarray(rgb).save(out / f"{stem}.png")
                mask = np.where(labels == BACKGROUND, len(CLASS_NAMES), labels).astype(np.uint8)
                im = Image.fromarray(mask, mode="P")
                im.putpalette(_palette())
                im.save(root / split / "mask" / f"{stem}.png")
            bar.update()
    bar.close()
    meta_file.write_text(json.dumps(meta, indent=2))
    return root


def main(argv: list[str] | None = None) -> None:
    """`python -m wsi_segment.synthetic.dataset OUT [--n-train N ...]`: a dataset folder."""
    import argparse

    d = SyntheticSpec()
    p = argparse.ArgumentParser(
        prog="python -m wsi_segment.synthetic.dataset",
        description="Write a synthetic dataset in the LUAD-HistoSeg layout (patch labels "
        "for train/, exact masks for val/ and test/).",
    )
    p.add_argument("out", type=Path, help="dataset folder to create")
    p.add_argument("--n-train", type=int, default=d.n_train, help=f"({d.n_train})")
    p.add_argument("--n-val", type=int, default=d.n_val, help=f"({d.n_val})")
    p.add_argument("--n-test", type=int, default=d.n_test, help=f"({d.n_test})")
    p.add_argument("--size", type=int, default=d.size, help=f"patch side in px ({d.size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"({d.seed})")
    a = p.parse_args(argv)
    spec = SyntheticSpec(
        n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, size=a.size, seed=a.seed
    )
    make_synthetic_dataset(a.out, spec, progress=True)


if __name__ == "__main__":
    main()
