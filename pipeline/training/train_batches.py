"""Training batches on the torch side: patches read into a uint8 batch, the seeded
augmentation (flips, a random square crop, an optional blur) and the epoch's batch order,
all drawn from one `torch.Generator`, so a training run repeats exactly. The dataset's files,
classes and labels are `datasets`'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from wsi_segment.errors import DatasetError
from wsi_segment.pipeline.training.datasets import read_image


def load_batch(paths: list[Path]) -> torch.Tensor:
    """uint8 (N, 3, H, W) from image files (all patches of a dataset share one size)."""
    arrays = [read_image(p) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DatasetError(f"patches differ in size {sorted(shapes)}: {paths[0].parent}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def augment(
    images: torch.Tensor,
    masks: list[torch.Tensor],
    gen: torch.Generator,
    crop: int | None = None,
    *,
    vflip: bool = True,
    blur: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random horizontal (and, with `vflip`, vertical) flips and a random square crop, the same
    for image and masks; with `blur`, a Gaussian blur of the image (the official stage 3's).

    Draws come from `gen` in a fixed order (the vertical draw is made even when unused, and
    blur draws only after all others), so a run (and a resumed run) is reproducible and
    switching blur on leaves the flips and crops of a run as they were.
    """
    n, _, h, w = images.shape
    flips = torch.rand(n, 2, generator=gen) < 0.5
    if not vflip:
        flips[:, 1] = False
    if crop is not None and crop < min(h, w):
        y0 = int(torch.randint(0, h - crop + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - crop + 1, (1,), generator=gen))
        images = images[:, :, y0 : y0 + crop, x0 : x0 + crop]
        masks = [m[:, y0 : y0 + crop, x0 : x0 + crop] for m in masks]
    out_img, out_masks = images.clone(), [m.clone() for m in masks]
    for dim_img, dim_mask, col in ((3, 2, 0), (2, 1, 1)):
        sel = flips[:, col]
        if sel.any():
            out_img[sel] = out_img[sel].flip(dim_img)
            for m in out_masks:
                m[sel] = m[sel].flip(dim_mask)
    if blur:
        out_img = random_blur(out_img, gen)
    return out_img.contiguous(), [m.contiguous() for m in out_masks]


def random_blur(images: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Per image, with probability `p`, PIL's Gaussian blur of radius U(0, 1): the official
    stage 3's `RandomGaussianBlur` (uint8 (N,3,H,W) in and out)."""
    draws = torch.rand(len(images), 2, generator=gen, dtype=torch.float64)
    out = images.clone()
    for i, (u, radius) in enumerate(draws.tolist()):
        if u < p:
            im = Image.fromarray(images[i].permute(1, 2, 0).numpy())
            blurred = np.asarray(im.filter(ImageFilter.GaussianBlur(radius=radius)))
            out[i] = torch.from_numpy(blurred.copy()).permute(2, 0, 1)
    return out


def _cut(order: list[int], batch_size: int) -> list[list[int]]:
    """Batches of `batch_size`; a last batch of one sample joins the batch before it."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """A seeded shuffle of 0..n-1 cut into batches; every index appears once per epoch.

    The last batch may be smaller, but never holds a single sample: that one joins the batch
    before it (batch_size + 1), because BatchNorm in training mode cannot normalise one
    sample (DeepLabV3+'s image-pooling branch fails on it outright).
    """
    return _cut(torch.randperm(n, generator=gen).tolist(), batch_size)


def batch_count(n: int, batch_size: int) -> int:
    """How many batches `epoch_batches(n, batch_size, ...)` gives (for the lr schedule)."""
    return len(_cut(list(range(n)), batch_size))
