"""A model's own validation patches, kept in its folder for the bf16 calibration.

Whether a model keeps its answers in bf16 depends on the tissue it meets: near-ties flip on
real H&E, not on synthetic tiles. The shipped CMU-1 tiles are one slide of one lab; the
patches a model was validated on are the tissue it was made for. So training records a few of
them (at most `MAX_VALIDATION_PATCHES`, chosen by name, the same every time) in the model
folder, and the calibration labels them beside the CMU-1 tiles.

On disk: `validation_patches.safetensors` holds one uint8 tensor `patches` (N, T, T, 3) at the
model's tile size (safetensors: loading cannot run code), and model.json's
`validation_patches` entry names the file, its sha256 (so the model's identity covers the
patches), the count, the split and the patch names. A folder without the entry (older
models) calibrates on the CMU-1 tiles alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load

from wsi_segment.errors import ModelError

from .checksum import file_sha256
from .meta import FORMAT, bundle_file
from .model_json import MAX_VALIDATION_PATCHES

PATCHES_FILE = "validation_patches.safetensors"
_KEY = "patches"
_WHAT = "validation patches"


@dataclass(frozen=True)
class ValidationPatches:
    """uint8 RGB patches (N, T, T, 3) at the model's tile size, with where they came from."""

    pixels: np.ndarray
    sources: tuple[str, ...]  # file names in the dataset split
    split: str  # val, or train for a dataset without a validation split

    def __post_init__(self) -> None:
        n = len(self.sources)
        shape = self.pixels.shape
        if not 1 <= n <= MAX_VALIDATION_PATCHES:
            raise ValueError(f"1 to {MAX_VALIDATION_PATCHES} validation patches, got {n}")
        if self.pixels.dtype != np.uint8 or len(shape) != 4 or shape[0] != n or shape[3] != 3:
            raise ValueError(f"validation patches must be uint8 ({n}, T, T, 3), got {shape}")


def choose(names: Sequence[str], count: int = MAX_VALIDATION_PATCHES) -> list[str]:
    """`count` names spread evenly over the sorted `names` (all of them when there are no
    more): the same choice on every machine, and patches from across the split rather than
    from the first slide the names sort to."""
    ordered = sorted(names)
    n = len(ordered)
    if n <= count:
        return ordered
    return [ordered[i * n // count] for i in range(count)]


def save_patches(folder: Path, patches: ValidationPatches) -> dict[str, Any]:
    """Write the patches file into the model folder; returns model.json's entry for it."""
    import torch  # training writes the patches: torch is loaded there

    from .tensor_files import write_tensors

    path = folder / PATCHES_FILE
    tensor = torch.from_numpy(np.ascontiguousarray(patches.pixels))
    write_tensors({_KEY: tensor}, path, metadata={"format": FORMAT})
    return {
        "file": PATCHES_FILE,
        "sha256": file_sha256(path),
        "count": len(patches.sources),
        "split": patches.split,
        "sources": list(patches.sources),
    }


def load_patches(folder: Path, doc: dict[str, Any], tile_size: int) -> np.ndarray | None:
    """The patches model.json names, uint8 (N, 3, T, T); None when it names none. A file
    that is missing, outside the folder, changed since it was saved or of the wrong shape
    is one ModelError naming it: the calibration never runs on patches it cannot trust."""
    entry = doc.get("validation_patches")
    if entry is None:
        return None
    path = bundle_file(folder, str(entry["file"]), _WHAT)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"{path} cannot be read ({exc.strerror}); copy the whole model folder"
        ) from exc
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ModelError(
            f"{path} does not match the sha256 in model.json (file replaced or corrupt); "
            "copy the model folder again, or re-save the model"
        )
    try:
        pixels = safetensors_load(data).get(_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path} is not a valid safetensors file ({exc}); re-save the model"
        ) from exc
    want = (int(entry["count"]), tile_size, tile_size, 3)
    if pixels is None or pixels.dtype != np.uint8 or tuple(pixels.shape) != want:
        got = None if pixels is None else (str(pixels.dtype), tuple(pixels.shape))
        raise ModelError(
            f"{path} must hold uint8 '{_KEY}' of shape {want} (count and tile size of "
            f"model.json), got {got}; re-save the model"
        )
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
