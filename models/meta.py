"""What a model expects and where it came from: the non-weight half of a model folder.

`read_model_json` is the one parser of `model.json` (every key checked against the table in
`models/model_json.py`). It imports no torch, so a slide is planned from the model's tile
size and mpp while the weights load in the background.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wsi_segment.errors import ModelError

from .checksum import file_sha256, model_identity
from .labels import RESERVED_NAMES
from .model_json import check_model_json

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
FORMAT = "wsi-segment-model"
FORMAT_VERSION = 1
T = TypeVar("T")
DEFAULT_EPSILON = 0.1  # the classification gate's threshold when model.json names none
IDENTITY_NORMALISATION: dict[str, list[float]] = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@dataclass
class ModelMeta:
    """Classes (with display colours), input scale and size, normalisation, gate, provenance.

    `normalisation` applies to inputs already scaled to [0, 1]: x = (x - mean) / std. The
    default is identity, like the official code (inputs only scaled to [0, 1]).
    """

    name: str
    classes: list[str]
    colors: list[tuple[int, int, int]]
    mpp: float = 1.0
    tile_size: int = 224
    normalisation: dict[str, list[float]] = field(
        default_factory=lambda: {k: list(v) for k, v in IDENTITY_NORMALISATION.items()}
    )
    gate_epsilon: float = DEFAULT_EPSILON
    provenance: dict[str, Any] = field(default_factory=dict)
    # a class's name spelled out ("TE" -> "Tumor epithelial"), for the reports; any subset
    class_titles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self, where: str = "model meta") -> None:
        """Raise ModelError naming `where` when a field is missing or inconsistent."""
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
            raise ModelError(f"{where}: 'classes' must be a non-empty list of names")
        if len(set(self.classes)) != len(self.classes):
            raise ModelError(f"{where}: class names must be unique, got {self.classes}")
        reserved = [c for c in self.classes if c in RESERVED_NAMES]
        if reserved:
            raise ModelError(
                f"{where}: class name {reserved[0]!r} is reserved for "
                f"{RESERVED_NAMES[reserved[0]]} in the outputs; rename that class in model.json"
            )
        if self.colors is None or len(self.colors) != len(self.classes):
            n = 0 if self.colors is None else len(self.colors)
            raise ModelError(
                f"{where}: {len(self.classes)} classes but {n} colours; give one [r, g, b] per class"
            )
        colors = []
        for c in self.colors:
            if len(c) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c):
                raise ModelError(f"{where}: colour {c!r} is not [r, g, b] with ints 0..255")
            colors.append((int(c[0]), int(c[1]), int(c[2])))
        self.colors = colors
        given: object = self.normalisation  # from_json stores model.json's value unchecked
        if given is None or given == "identity":
            self.normalisation = {k: list(v) for k, v in IDENTITY_NORMALISATION.items()}
        norm = self.normalisation
        if not isinstance(norm, dict) or set(norm) != {"mean", "std"}:
            raise ModelError(
                f"{where}: normalisation must be {{'mean': [3], 'std': [3]}} or 'identity'"
            )
        if len(norm["mean"]) != 3 or len(norm["std"]) != 3 or min(norm["std"]) <= 0:
            raise ModelError(
                f"{where}: normalisation needs 3 means and 3 positive stds, got {norm}"
            )
        if not (isinstance(self.mpp, int | float) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ModelError(f"{where}: mpp must be a positive number (um/px), got {self.mpp!r}")
        if not (isinstance(self.tile_size, int) and self.tile_size > 0):
            raise ModelError(
                f"{where}: tile_size must be a positive integer, got {self.tile_size!r}"
            )
        if not (isinstance(self.gate_epsilon, int | float) and 0.0 <= self.gate_epsilon < 1.0):
            raise ModelError(f"{where}: gate_epsilon must be in [0, 1), got {self.gate_epsilon!r}")
        unknown = sorted(set(self.class_titles) - set(self.classes))
        if unknown:
            raise ModelError(
                f"{where}: class_titles names {unknown[0]!r}, which is not one of the classes "
                f"{self.classes}; spell out only the model's classes"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "colors": [list(c) for c in self.colors],
            "mpp": self.mpp,
            "tile_size": self.tile_size,
            "normalisation": {k: list(v) for k, v in self.normalisation.items()},
            "gate_epsilon": self.gate_epsilon,
            "provenance": dict(self.provenance),
            # only when given: a model saved without titles keeps its bytes (and identity)
            **({"class_titles": dict(self.class_titles)} if self.class_titles else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "model.json") -> ModelMeta:
        """Build from model.json's fields; a missing field is a ModelError naming `where`."""
        for key in ("name", "classes", "colors", "mpp", "tile_size"):
            if key not in data:
                raise ModelError(f"{where}: missing {key!r}")
        meta = object.__new__(cls)
        meta.name = str(data["name"])
        meta.classes = list(data["classes"]) if isinstance(data["classes"], list) else []
        meta.colors = list(data["colors"]) if isinstance(data["colors"], list) else []
        meta.mpp = data["mpp"]
        meta.tile_size = data["tile_size"]
        meta.normalisation = data.get("normalisation", "identity")
        meta.gate_epsilon = data.get("gate_epsilon", DEFAULT_EPSILON)
        meta.provenance = dict(data.get("provenance") or {})
        meta.class_titles = dict(data.get("class_titles") or {})
        meta.validate(where)
        return meta


def read_model_json(folder: str | Path) -> tuple[dict[str, Any], ModelMeta]:
    """`folder/model.json` as a dict (architecture and weights entries included) and its
    ModelMeta; any problem is a ModelError naming the file and the fix."""
    doc, meta, _ = load_model_json(folder)
    return doc, meta


def load_model_json(folder: str | Path) -> tuple[dict[str, Any], ModelMeta, str]:
    """`read_model_json` plus the sha256 of the very bytes parsed (the model's identity is
    the hash of what was loaded, never of a file read again later)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ModelError(
            f"{path} is missing: a model folder needs model.json next to model.safetensors"
        )
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc.strerror}); check its permissions") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f'{path} is not a wsi-segment model description (no "format": "{FORMAT}")')
    version = doc.get("format_version", FORMAT_VERSION)
    if not (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
        raise ModelError(
            f"{path}: 'format_version' is {version!r}; allowed: an integer from 1 to {FORMAT_VERSION}"
        )
    if version > FORMAT_VERSION:
        raise ModelError(f"{path} has format_version {version}; upgrade wsi-segment")
    problem = check_model_json(doc, str(path))
    if problem is not None:
        raise ModelError(f"{problem}; fix model.json or re-save the model")
    return doc, ModelMeta.from_json(doc, where=str(path)), hashlib.sha256(raw).hexdigest()


def weights_path(folder: str | Path, doc: dict[str, Any]) -> Path:
    """The weights file model.json names, which must lie inside the model folder once links
    are resolved (a file elsewhere could change without the model's identity changing)."""
    name = str((doc.get("weights") or {}).get("file", WEIGHTS_FILE))
    return bundle_file(folder, name, "weights")


def bundle_file(folder: str | Path, name: str, what: str) -> Path:
    """`folder/name`, a file model.json names (`what`: the weights, the validation patches),
    refused unless it is a file inside the model folder once links are resolved."""
    folder = Path(folder)
    path = folder / name
    real, home = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, home]) != home or real == home:
        raise ModelError(
            f"{path} leads outside the model folder (to {real}); the {what} must lie inside "
            f"{folder}: copy the {what} there and name them relative to it in model.json"
        )
    if os.path.isdir(real):
        raise ModelError(f"{path} is a folder, not the {what} file; copy the model's {what} there")
    if not os.path.isfile(real):
        raise ModelError(
            f"{path} is missing: model.json names {what} that are not next to it; copy the "
            "whole model folder"
        )
    return path


def model_files_identity(folder: str | Path) -> tuple[str, ModelMeta]:
    """The identity `bundle.load_bundle` gives the model in `folder` (`checksum.model_identity`
    of model.json's and the weights' bytes), with its meta, without building the network or
    importing torch: a rerun compares it with a finished run's before any model loads. A
    folder that would not load may still hash (loading it reports why); an unreadable file
    is the ModelError loading would raise."""
    doc, meta, json_sha = load_model_json(folder)
    weights = weights_path(folder, doc)
    return model_identity(json_sha, read_weights(weights, lambda: file_sha256(weights))), meta


def read_weights(path: Path, read: Callable[[], T]) -> T:
    """`read()` of the weights file at `path` (its bytes, its sha256); an OSError is the one
    ModelError that names the file and the fix."""
    try:
        return read()
    except OSError as exc:
        raise ModelError(
            f"{path} cannot be read ({exc.strerror}); check that the model folder is complete "
            "and readable"
        ) from exc


def model_files_stamp(folder: str | Path) -> tuple[int, ...]:
    """(inode, size, mtime_ns) of model.json and the weights file it names: what tells a
    process that a model it loaded earlier is no longer what is on disk. Empty when the
    folder is refused (loading it then reports why)."""
    try:
        doc, _ = read_model_json(folder)
        files = (Path(folder) / META_FILE, weights_path(folder, doc))
        stats = [os.stat(f) for f in files]
    except (ModelError, OSError):
        return ()
    return tuple(v for st in stats for v in (st.st_ino, st.st_size, st.st_mtime_ns))
