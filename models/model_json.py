"""What each key of model.json may hold: one table, checked once when the file is read.

A model folder is untrusted input (downloaded, copied, edited by hand). Every key is checked
for type and range before anything is built from it, so a bad file gives one error naming
the key, the value and what is allowed, instead of a traceback or a misleading failure
later (a huge tile blamed on /dev/shm, a bad type on the encoder). Keys not in the table are
ignored (newer optional keys); a new optional key is one `Key` line.

Limits are sane bounds, not tuning: they exist so that a typo cannot ask for gigabytes.
Names of encoders are plain registry names: a name with ':' or '/' (`hf-hub:...`,
`local-dir:...`, a Hugging Face repo id) would make timm fetch files from outside the
bundle, and inference never touches the network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .cam_methods import CAM_METHODS

# A check returns None when the value is allowed, else a phrase saying what is allowed.
Check = Callable[[Any], str | None]

MAX_CLASSES = 64  # label maps are uint8 with 254 and 255 reserved (models.labels); no tissue taxonomy comes near
TILE_RANGE = (32, 2048)  # px; a multiple of 16 (DeepLabV3+ input, encoder stride 8 or 16)
DECODER_CHANNELS_RANGE = (8, 1024)  # smp's default is 256
ATROUS_RATE_RANGE = (1, 128)  # ASPP dilations; DeepLabV3+ uses 6-36
MPP_RANGE = (0.01, 100.0)  # um/px, the range --mpp accepts
NAME_LENGTH = 200
MAX_VALIDATION_PATCHES = (
    16  # patches training records for the bf16 calibration (models.validation_patches)
)
_LOCAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TAPS = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class Key:
    """One key of model.json (dotted for nested objects) and its check. `required` applies
    when its parent object is present; a key under a parent that holds another allowed
    form (a backbone given as a name, not an object) is skipped."""

    path: str
    check: Check
    required: bool = False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, hi: int, multiple: int = 1) -> Check:
    what = f"an integer from {lo} to {hi}" + (f", a multiple of {multiple}" if multiple > 1 else "")
    return lambda v: None if _is_int(v) and lo <= v <= hi and v % multiple == 0 else what


def number(lo: float, hi: float, *, hi_open: bool = False, lo_open: bool = False) -> Check:
    what = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v: Any) -> str | None:
        if not _is_number(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
            return what
        return None

    return check


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and 0 < len(v) <= NAME_LENGTH else "a non-empty string"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def choice(*values: Any) -> Check:
    return lambda v: None if v in values else f"one of {list(values)}"


def key_of(registry: Mapping[str, Any]) -> Check:
    """A name of `registry`, read when checked: an entry registered later counts."""
    return lambda v: None if isinstance(v, str) and v in registry else f"one of {list(registry)}"


def mapping(v: Any) -> str | None:
    return None if isinstance(v, dict) else "an object ({...})"


def titles(v: Any) -> str | None:
    """Class titles: an object of class name -> its name spelled out, both non-empty."""
    ok = isinstance(v, dict) and all(text(k) is None and text(t) is None for k, t in v.items())
    return None if ok else 'an object of class name -> title, e.g. {"TE": "Tumor epithelial"}'


def either(*checks: Check) -> Check:
    def check(v: Any) -> str | None:
        problems = [c(v) for c in checks]
        return None if None in problems else " or ".join(p for p in problems if p)

    return check


def list_of(item: Check, lo: int, hi: int, what: str) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, list) and lo <= len(v) <= hi and all(item(x) is None for x in v)
        count = str(lo) if lo == hi else f"{lo} to {hi}"
        return None if ok else f"a list of {count} {what}"

    return check


def rgb(v: Any) -> str | None:
    ok = (
        isinstance(v, list | tuple) and len(v) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in v)
    )
    return None if ok else "[r, g, b] with integers 0..255"


def normalisation(v: Any) -> str | None:
    if v is None or v == "identity":
        return None
    positive = number(0.0, 1e6, lo_open=True)
    ok = (
        isinstance(v, dict)
        and set(v) == {"mean", "std"}
        and list_of(number(-1e6, 1e6), 3, 3, "")(v["mean"]) is None
        and list_of(positive, 3, 3, "")(v["std"]) is None
    )
    return None if ok else '"identity" or {"mean": [3 numbers], "std": [3 positive numbers]}'


def local_name(v: Any) -> str | None:
    """A timm / segmentation-models-pytorch registry name, which builds without a download."""
    if isinstance(v, str) and _LOCAL_NAME.fullmatch(v):
        return None
    return (
        "a model name from the installed timm / segmentation-models-pytorch registries "
        "(e.g. resnet18, tu-resnet10t); a name with ':' or '/' (hf-hub:, local-dir:, a "
        "repo id) would fetch files from outside the model folder, which inference never does"
    )


def relative_file(v: Any) -> str | None:
    """A file name relative to the model folder that cannot leave it ('..', absolute)."""
    if isinstance(v, str) and v and "\0" not in v and "\\" not in v:
        parts = PurePosixPath(v).parts
        if not PurePosixPath(v).is_absolute() and ".." not in parts and parts != (".",):
            return None
    return "a file name inside the model folder (relative, no '..'), e.g. model.safetensors"


def sha256_hex(v: Any) -> str | None:
    return None if isinstance(v, str) and _SHA256.fullmatch(v) else "64 lowercase hex digits"


MODEL_JSON_KEYS: tuple[Key, ...] = (
    Key("name", text, required=True),
    Key("classes", list_of(text, 1, MAX_CLASSES, "non-empty class names"), required=True),
    Key("colors", list_of(rgb, 1, MAX_CLASSES, "[r, g, b] colours"), required=True),
    Key("mpp", number(*MPP_RANGE), required=True),
    Key("tile_size", integer(*TILE_RANGE, multiple=16), required=True),
    Key("normalisation", normalisation),
    Key("gate_epsilon", number(0.0, 1.0, hi_open=True)),
    Key("class_titles", titles),  # each class's name spelled out, for the reports
    Key("provenance", either(mapping, choice(None))),
    # how stage 2 made the pseudo masks; absent (older models): Grad-CAM at three depths
    Key("provenance.pseudo_masks", either(mapping, choice(None))),
    Key("provenance.pseudo_masks.method", key_of(CAM_METHODS), required=True),
    Key("provenance.pseudo_masks.layers", list_of(text, 1, 8, "mask names")),
    Key("provenance.pseudo_masks.taps", list_of(choice(*_TAPS), 1, 8, "stage names")),
    Key("provenance.pseudo_masks.relu", boolean),
    Key("provenance.pseudo_masks.background", boolean),
    Key("architecture", mapping, required=True),
    Key("architecture.classifier", mapping, required=True),
    Key("architecture.classifier.backbone", either(local_name, mapping), required=True),
    Key("architecture.classifier.backbone.name", local_name, required=True),
    Key(
        "architecture.classifier.backbone.taps",
        list_of(choice(*_TAPS), 1, 4, "stage names layer1..layer4"),
    ),
    Key("architecture.classifier.backbone.output_stride", choice(8, 16, 32)),
    Key("architecture.classifier.head", either(text, mapping), required=True),
    Key("architecture.classifier.head.kind", text, required=True),
    Key("architecture.classifier.head.dropout", number(0.0, 1.0, hi_open=True)),
    Key("architecture.classifier.head.fin_width", integer(1, 256)),
    Key("architecture.classifier.num_classes", integer(1, MAX_CLASSES)),
    Key("architecture.segmenter", mapping, required=True),
    Key("architecture.segmenter.encoder", local_name, required=True),
    Key("architecture.segmenter.num_classes", integer(1, MAX_CLASSES)),
    Key("architecture.segmenter.output_stride", choice(8, 16)),
    Key("architecture.segmenter.decoder_channels", integer(*DECODER_CHANNELS_RANGE)),
    # absent (older models): segmenter.LEGACY_ATROUS_RATES
    Key(
        "architecture.segmenter.atrous_rates",
        list_of(
            integer(*ATROUS_RATE_RANGE),
            3,
            3,
            "ASPP dilation rates (integers {} to {})".format(*ATROUS_RATE_RANGE),
        ),
    ),
    Key("weights", mapping),
    Key("weights.file", relative_file),
    Key("weights.dtype", choice("float32", "float16")),
    Key("weights.sha256", sha256_hex),
    # the model's own validation patches (absent in older models and models not trained here)
    Key("validation_patches", mapping),
    Key("validation_patches.file", relative_file, required=True),
    Key("validation_patches.sha256", sha256_hex, required=True),
    Key("validation_patches.count", integer(1, MAX_VALIDATION_PATCHES), required=True),
    Key("validation_patches.split", choice("val", "train")),
    Key("validation_patches.sources", list_of(text, 1, MAX_VALIDATION_PATCHES, "patch names")),
)


def check_model_json(doc: dict[str, Any], where: str) -> str | None:
    """The first problem of `doc` against the table, as one message naming `where`, the
    key, the value and what is allowed; None when every key holds an allowed value."""
    for key in MODEL_JSON_KEYS:
        parent: Any = doc
        *parents, last = key.path.split(".")
        for part in parents:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):  # parent absent, or given in another allowed form
            continue
        if last not in parent:
            if key.required:
                return f"{where}: missing {key.path!r}"
            continue
        problem = key.check(parent[last])
        if problem is not None:
            shown = repr(parent[last])
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            return f"{where}: {key.path!r} is {shown}; allowed: {problem}"
    return None
