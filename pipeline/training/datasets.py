"""Readers for patch-level WSSS datasets (LUAD-HistoSeg and BCSS-WSSS layouts).

Layout: `train/<name>[labels].png` (patch-level labels in the file name only),
`val|test/img/*.png` + `val|test/mask/*.png` (P-mode masks, value K = background/exclude).
Class names, order and colours are read from the dataset itself (`dataset.json`, or the
dataset's own `Readme.txt` and mask palette), never from code constants, so a new dataset
in the same layout needs no code change.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_segment.errors import DatasetError
from wsi_segment.models.labels import RESERVED_NAMES

# `-[1 0 0 1].png` (LUAD-HistoSeg) or `[1101].png` (BCSS-WSSS), at the end of the stem.
_LABEL_RE = re.compile(r"\[([01](?:\s?[01])*)\]\.png$", re.IGNORECASE)
# Readme line "[a: Tumor epithelial (TE), b: Necrosis (NEC), ...]"
_CLASS_RE = re.compile(r"\b([a-z]):\s*([^,()\]]+?)\s*\((\w+)\)")
_PALETTE_RE = re.compile(r"palette\[(\d+):(\d+)\]\s*=\s*\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")
SPLITS = ("train", "val", "test")
# Training batches hold at least two samples (see `epoch_batches`), so a dataset needs two.
MIN_TRAIN_PATCHES = 2


@dataclass(frozen=True)
class TrainItem:
    """One training patch and its patch-level multi-hot label vector."""

    image: Path
    labels: tuple[int, ...]


@dataclass(frozen=True)
class MaskItem:
    """One evaluation patch and its pixel mask."""

    image: Path
    mask: Path


@dataclass(frozen=True)
class WsssDataset:
    """A dataset folder: its classes, colours and files.

    `ignore_index` (= number of classes) marks background/exclude pixels in masks.
    `background_rule` says whether white pixels are background when making pseudo masks
    (LUAD-HistoSeg: yes; BCSS-WSSS: no, white can be tissue there).
    """

    root: Path
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    background_rule: bool
    layout: str
    background_color: tuple[int, int, int] = (255, 255, 255)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # each class's name spelled out (Readme's "Tumor epithelial (TE)", or dataset.json's
    # `class_titles`): the trained model's class_titles, for the reports
    titles: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        """A class the outputs reserve a name for would be refused when the trained model is
        saved: say so before any training starts."""
        reserved = [c for c in self.classes if c in RESERVED_NAMES]
        if reserved:
            raise DatasetError(
                f"{self.root}: class name {reserved[0]!r} is reserved for "
                f"{RESERVED_NAMES[reserved[0]]} in wsi-segment's outputs; rename that class "
                "(dataset.json or Readme.txt)"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ignore_index(self) -> int:
        return len(self.classes)

    def train_dir(self) -> Path:
        for name in ("train", "training"):
            if (self.root / name).is_dir():
                return self.root / name
        raise DatasetError(f"{self.root}: no train/ folder; expected train/<name>[labels].png")

    def train_items(self, min_count: int = 1) -> list[TrainItem]:
        """Training patches sorted by name, each with its parsed label vector.

        Training asks for `MIN_TRAIN_PATCHES` (a network with BatchNorm cannot train on one
        sample); making pseudo masks works on any number.
        """
        files = sorted(self.train_dir().glob("*.png"))
        if not files:
            raise DatasetError(f"{self.train_dir()}: no .png patches found")
        if len(files) < min_count:
            raise DatasetError(
                f"{self.train_dir()}: training needs at least {min_count} patches, found "
                f"{len(files)} (BatchNorm cannot learn from a single sample); add patches"
            )
        return [TrainItem(f, parse_labels(f, self.num_classes)) for f in files]

    def has_masks(self, split: str) -> bool:
        return (self.root / split / "img").is_dir() and (self.root / split / "mask").is_dir()

    def mask_items(self, split: str) -> list[MaskItem]:
        """Image/mask pairs of `split` (val or test), matched by file name."""
        if not self.has_masks(split):
            raise DatasetError(f"{self.root / split}: expected img/ and mask/ folders")
        images = sorted((self.root / split / "img").glob("*.png"))
        if not images:
            raise DatasetError(f"{self.root / split / 'img'}: no .png patches found")
        items = []
        for img in images:
            mask = self.root / split / "mask" / img.name
            if not mask.is_file():
                raise DatasetError(f"{img}: no mask with the same name in {mask.parent}")
            _same_size(img, mask)
            items.append(MaskItem(img, mask))
        return items

    def read_mask(self, path: str | Path) -> np.ndarray:
        """Mask as uint8 class indices (H, W), values in 0..K (K = background/exclude)."""
        return read_mask(path, self.colors, self.background_color)

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "colors": [list(c) for c in self.colors],
            "background_color": list(self.background_color),
            "background_rule": self.background_rule,
            "layout": self.layout,
            **self.extra,
        }


def parse_labels(path: str | Path, num_classes: int | None = None) -> tuple[int, ...]:
    """Multi-hot label vector from a training file name (`...-[1 0 0 1].png`, `...[1101].png`)."""
    name = Path(path).name
    m = _LABEL_RE.search(name)
    if m is None:
        raise DatasetError(
            f"{path}: no patch label in the file name; training patches must be named "
            "like 'id-[1 0 0 1].png' (LUAD-HistoSeg) or 'id[1101].png' (BCSS-WSSS)"
        )
    labels = tuple(int(c) for c in m.group(1) if c in "01")
    if num_classes is not None and len(labels) != num_classes:
        raise DatasetError(
            f"{path}: label has {len(labels)} entries but the dataset has {num_classes} classes"
        )
    return labels


def read_image(path: str | Path) -> np.ndarray:
    """RGB patch as uint8 (H, W, 3)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc


def read_mask(
    path: str | Path,
    colors: tuple[tuple[int, int, int], ...],
    background_color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Decode a P-mode mask to indices; RGB masks are mapped through the class colours."""
    k = len(colors)
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L"):
                mask = np.asarray(im, dtype=np.uint8).copy()
            else:
                rgb = np.asarray(im.convert("RGB"))
                mask = np.full(rgb.shape[:2], 255, np.uint8)
                for idx, color in enumerate((*colors, background_color)):
                    mask[(rgb == np.asarray(color, np.uint8)).all(-1)] = idx
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read mask ({exc})") from exc
    if mask.size and int(mask.max()) > k:
        raise DatasetError(
            f"{path}: mask value {int(mask.max())} outside 0..{k} "
            f"({k} classes + {k} for background/exclude)"
        )
    return mask


def _readme_meta(
    root: Path,
) -> tuple[list[str], list[tuple[int, int, int]], dict[str, str]] | None:
    """Class abbreviations, palette and the classes' names spelled out, from the dataset's
    own Readme.txt, if it has them."""
    readme = next((p for p in root.glob("*") if p.name.lower() == "readme.txt"), None)
    if readme is None:
        return None
    text = readme.read_text(errors="replace")
    classes: list[str] = []
    titles: dict[str, str] = {}
    for line in text.splitlines():
        found = _CLASS_RE.findall(line)
        if len(found) >= 2:
            classes = [abbr for _, _, abbr in sorted(found)]
            titles = {abbr: title for _, title, abbr in found}
            break
    palette = sorted(
        (int(a), (int(r), int(g), int(b))) for a, _, r, g, b in _PALETTE_RE.findall(text)
    )
    colors = [c for _, c in palette]
    if not classes:
        return None
    return classes, colors, titles  # colours may be empty: the masks' palette can supply them


def _same_size(image: Path, mask: Path) -> None:
    """A mask must cover its image pixel for pixel (sizes from the headers: nothing is
    decoded); else scoring stacks arrays of two shapes: a traceback, in training after
    stages 1 and 2."""
    try:
        with Image.open(image) as a, Image.open(mask) as b:
            image_size, mask_size = a.size, b.size
    except OSError as exc:
        raise DatasetError(f"{mask}: cannot read it or its image ({exc})") from exc
    if image_size != mask_size:
        raise DatasetError(
            f"{mask}: the mask is {mask_size[0]}x{mask_size[1]} px but its image "
            f"{image.name} is {image_size[0]}x{image_size[1]}; give each image its mask at "
            "the same size"
        )


def _mask_palette(root: Path, k: int) -> list[tuple[int, int, int]] | None:
    """The first k+1 palette entries of the first P-mode mask found, if any."""
    for split in ("val", "test"):
        for mask in sorted((root / split / "mask").glob("*.png"))[:1]:
            try:
                with Image.open(mask) as im:
                    pal = im.getpalette()
            except OSError as exc:  # a truncated file: a traceback before
                raise DatasetError(f"{mask}: cannot read mask ({exc})") from exc
            if pal and len(pal) >= 3 * (k + 1):
                return [tuple(pal[3 * i : 3 * i + 3]) for i in range(k + 1)]  # type: ignore[misc]
    return None


def _dataset_from_json(root: Path, meta_file: Path) -> WsssDataset:
    """The dataset its `dataset.json` describes (classes, colours, background, layout)."""
    try:
        meta = json.loads(meta_file.read_text())
        classes = tuple(meta["classes"])
        colors = tuple(tuple(int(v) for v in c) for c in meta["colors"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{meta_file}: invalid ({exc}); needs 'classes' and 'colors'") from exc
    if len(colors) != len(classes):
        raise DatasetError(f"{meta_file}: {len(classes)} classes but {len(colors)} colours")
    known = {"classes", "colors", "background_color", "background_rule", "layout", "class_titles"}
    titles = meta.get("class_titles") or {}
    if not isinstance(titles, dict) or not all(isinstance(t, str) and t for t in titles.values()):
        raise DatasetError(f'{meta_file}: class_titles must be {{"<class>": "<its name>", ...}}')
    return WsssDataset(
        root=root,
        classes=classes,
        colors=colors,  # type: ignore[arg-type]
        background_rule=bool(meta.get("background_rule", True)),
        layout=str(meta.get("layout", "luad")),
        background_color=tuple(meta.get("background_color", (255, 255, 255))),
        extra={k: v for k, v in meta.items() if k not in known},
        titles={str(k): v for k, v in titles.items()},
    )


def open_dataset(root: str | Path) -> WsssDataset:
    """Open a dataset folder; classes and colours come from `dataset.json` or Readme + masks."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    meta_file = root / "dataset.json"
    if meta_file.is_file():
        return _dataset_from_json(root, meta_file)
    readme = _readme_meta(root)
    if readme is None:
        raise DatasetError(
            f"{root}: cannot tell the classes: add a Readme.txt like LUAD-HistoSeg's "
            "('[a: Name (ABBR), b: ...]' and 'palette[0:3] = [r,g,b]' lines) or a dataset.json "
            'with {"classes": [...], "colors": [[r,g,b], ...]}'
        )
    classes_l, colors_l, titles = readme
    k = len(classes_l)
    from_masks = _mask_palette(root, k)
    if from_masks is not None:
        colors_l = from_masks  # the masks are the ground truth for their own palette
    elif len(colors_l) < k:
        raise DatasetError(
            f"{root}: Readme.txt names {k} classes but neither it ('palette[0:3] = [r,g,b]' "
            "lines) nor a P-mode mask gives their colours; add them or write a dataset.json"
        )
    elif len(colors_l) < k + 1:
        colors_l = [*colors_l, (255, 255, 255)]
    ds = WsssDataset(
        root=root,
        classes=tuple(classes_l),
        colors=tuple(colors_l[:k]),
        background_color=tuple(colors_l[k]),  # type: ignore[arg-type]
        background_rule=True,
        layout="luad",
        titles=titles,
    )
    # BCSS-WSSS packs its labels ('[1101]') and has no white background class to detect. A
    # dataset of val/test only (evaluate's) cannot show them: LUAD-HistoSeg's rule, unless
    # a dataset.json says otherwise
    train = [root / n for n in ("train", "training") if (root / n).is_dir()]
    first = next(iter(sorted(train[0].glob("*.png"))), None) if train else None
    if first is not None and re.search(r"\[[01]{2,}\]\.png$", first.name):
        ds = dataclasses.replace(ds, background_rule=False, layout="bcss")
    return ds
