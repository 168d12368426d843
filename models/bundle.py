"""Model folders on disk: `model.safetensors` (weights) + `model.json` (everything else).

Loading never unpickles: safetensors is a flat tensor format whose parser cannot run
code, so a pickle renamed `model.safetensors` fails to parse and is refused. The JSON
describes both architectures, so `load_bundle` rebuilds the networks and checks that every
weight is present with the right shape before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load

from wsi_segment.errors import ModelError

from .checksum import file_sha256, model_identity
from .classifier import build_classifier
from .meta import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    ModelMeta,
    load_model_json,
)
from .model_files import BuiltModel, verified_weights
from .segmentation_model import SegmentationModel
from .segmenter import Segmenter
from .tensor_files import write_tensors
from .validation_patches import ValidationPatches, load_patches, save_patches

__all__ = [
    "BuiltModel",
    "ModelMeta",
    "SegmentationModel",
    "demo_model_dir",
    "load_bundle",
    "load_model",
    "save_model",
]


def demo_model_dir() -> Path:
    """The demo model shipped with the package (mpp 1.0, tile 224, LUAD-HistoSeg classes)."""
    return Path(__file__).resolve().parent / "demo_model"


def _config(net: torch.nn.Module) -> dict[str, Any]:
    """`net.config()`, the architecture model.json records to rebuild the network."""
    config = getattr(net, "config", None)
    if not callable(config):
        raise AttributeError(f"{type(net).__name__} has no config()")
    arch: dict[str, Any] = config()
    return arch


def save_model(
    model: SegmentationModel,
    folder: str | Path,
    meta: ModelMeta | None = None,
    *,
    weights_dtype: str = "float32",
    validation_patches: ValidationPatches | None = None,
) -> Path:
    """Write `folder/model.safetensors` + `folder/model.json`; returns the folder.

    `validation_patches` (training gives them; models.validation_patches) are written beside
    the weights, at the model's tile size, for the bf16 calibration.

    `weights_dtype="float16"` halves the file (floats are stored fp16 and loaded back as
    fp32; outputs change by ~1e-3). Both networks must have `config()` (those built by
    models.classifier / models.segmenter do).
    """
    meta = meta if meta is not None else model.meta
    meta.validate()
    if weights_dtype not in ("float32", "float16"):
        raise ModelError(f"weights_dtype must be float32 or float16, got {weights_dtype!r}")
    try:
        arch = {"classifier": _config(model.classifier), "segmenter": _config(model.segmenter)}
    except (AttributeError, TypeError) as exc:
        raise ModelError(
            f"cannot describe this model's architecture for model.json: {exc}"
        ) from exc
    for part in ("classifier", "segmenter"):
        if arch[part]["num_classes"] != meta.num_classes:
            raise ModelError(
                f"{part} has {arch[part]['num_classes']} classes but meta names {meta.num_classes}"
            )
    tile = meta.tile_size
    if validation_patches is not None and validation_patches.pixels.shape[1:3] != (tile, tile):
        raise ModelError(
            f"validation patches are {validation_patches.pixels.shape[1:3]} px, the model's "
            f"tiles {tile} px"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if weights_dtype == "float16" and value.is_floating_point():
            value = value.half()
        state[key] = value
    weights = folder / WEIGHTS_FILE
    write_tensors(state, weights, metadata={"format": FORMAT})
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta.to_json(),
        "architecture": arch,
        "weights": {"file": WEIGHTS_FILE, "dtype": weights_dtype, "sha256": file_sha256(weights)},
    }
    if validation_patches is not None:
        doc["validation_patches"] = save_patches(folder, validation_patches)
    (folder / META_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return folder


def load_bundle(folder: str | Path, device: str = "cpu") -> BuiltModel:
    """Rebuild the model described by `folder/model.json` with its weights, in eval mode, on
    `device`, with the identity of the bytes it parsed and the folder's validation patches.

    Any problem (missing folder or file, bad JSON, unsafe or corrupt weights, weights that
    do not match the JSON, a weights file outside the folder) raises one ModelError naming
    the file and the fix. The identity is the hash of the JSON and weight bytes loaded
    (model.json holds the validation patches' sha256, checked against their bytes here).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(
            f"model folder {folder} does not exist (expected model.json + model.safetensors)"
        )
    doc, meta, json_sha = load_model_json(folder)
    weights, data, weights_sha = verified_weights(folder, doc)  # hashed and parsed: read once
    state = _parse_weights(data, weights)
    del data
    model = _build(doc, meta, folder / META_FILE)
    _check_state(model, state, weights)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    identity = model_identity(json_sha, weights_sha)
    patches = load_patches(folder, doc, int(meta.tile_size))
    return BuiltModel(model.to_device(device), identity, patches)


def load_model(folder: str | Path, device: str = "cpu") -> SegmentationModel:
    """The network of `load_bundle(folder, device)`: for training and evaluation code, which
    needs no identity."""
    return load_bundle(folder, device).network()


def _build(doc: dict[str, Any], meta: ModelMeta, where: Path) -> SegmentationModel:
    arch = doc.get("architecture")
    if not isinstance(arch, dict) or "classifier" not in arch or "segmenter" not in arch:
        raise ModelError(f"{where}: missing 'architecture' with 'classifier' and 'segmenter'")
    k = meta.num_classes
    for part in ("classifier", "segmenter"):
        n = arch[part].get("num_classes", k)
        if n != k:
            raise ModelError(
                f"{where}: {part} has {n} classes but 'classes' names {k}; fix model.json"
            )
    try:
        clf = arch["classifier"]
        classifier = build_classifier(clf["backbone"], clf["head"], k)
        segmenter = Segmenter.from_config(arch["segmenter"], k)
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{where}: bad architecture description ({exc!r})") from exc
    except Exception as exc:  # ConfigError from the builders: re-label as a model problem
        raise ModelError(f"{where}: cannot build the architecture it describes: {exc}") from exc
    return SegmentationModel(classifier, segmenter, meta)


def _parse_weights(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors_load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path} is not a valid safetensors file ({exc}); pickled checkpoints (.pt/.pth) "
            "are refused because loading them can run code; convert them with safetensors"
        ) from exc


def _check_state(model: SegmentationModel, state: dict[str, torch.Tensor], path: Path) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    wrong = [
        f"{k}: file {have[k]} vs model {want[k]}"
        for k in sorted(set(want) & set(have))
        if want[k] != have[k]
    ]
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape (e.g. {wrong[:3]})")
    if problems:
        raise ModelError(
            f"{path} does not match model.json ({'; '.join(problems)}); "
            "the JSON and the weights come from different models"
        )
