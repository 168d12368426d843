"""Pretrained encoder weights for training: a local file, or a timm / Hugging Face name.

A lab with a few thousand patches trains far better encoders from pretrained weights than
from random ones. A local file is read without unpickling (safetensors, or a PyTorch
checkpoint through `torch.load(weights_only=True)`); a name goes through timm's own loading
and cache, so it works only where the machine is online. Keys are matched by name after
dropping the wrappers checkpoints commonly carry (`module.`, `encoder.`, `backbone.`,
`model.`, ...), which also maps smp's `tu-` encoders (`model.*`) onto timm names; a key
counts as matched only with the same shape. The report says what matched, what the encoder
still lacks and what the file has beyond it; a file of which nothing matches is refused.

A whole segmentation model (an smp DeepLabV3+ state dict: `encoder.*`, `decoder.*`,
`segmentation_head.*`) starts the whole DeepLabV3+ when the caller offers it (`whole`): its
encoder, ASPP and decoder, and its last layer only where the class counts agree (else that
layer is reported as of another shape and keeps its fresh initialisation), as the official
stage 3 starts from a pretrained DeepLabV3+ minus its last layer. The report's scope says
what loaded, not what the file is: the official code's `deeplab-resnet.pth.tar` (`backbone.*`,
`aspp.*`, `decoder.last_conv.*`, another layout than smp's) is a whole model of which only
the backbone fits, so it loads as an encoder and the summary says the ASPP and decoder
start fresh.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_segment.errors import ConfigError

from .checksum import file_sha256

#: Leading key parts dropped before matching: wrappers of DataParallel, Lightning, smp, timm.
WRAPPERS = ("module", "encoder", "backbone", "model", "body", "net", "state_dict")
#: Suffixes that make `--pretrained` a file even when it does not exist (then: an error).
FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")
#: Containers a PyTorch checkpoint may hold its weights under.
CONTAINERS = ("state_dict", "model", "model_state_dict", "module", "net")


@dataclass(frozen=True)
class PretrainedReport:
    """What `load_pretrained` did: the source, its sha256, and the key match."""

    source: str
    kind: str  # "file" or "timm"
    sha256: str  # of the file's bytes; for a timm name, of the loaded tensors
    matched: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # same name, other shape
    scope: str = "encoder"  # "model": tensors loaded beyond the encoder (ASPP, decoder)
    whole_file: bool = False  # a whole segmentation model, offered a whole DeepLabV3+

    def summary(self, what: str) -> str:
        """One line for the training log: what loaded, and what of a whole model did not."""
        extra = ", ".join(self.unexpected[:4]) + (" ..." if len(self.unexpected) > 4 else "")
        whole = ""
        if self.scope == "model":
            whole = " (whole DeepLabV3+: encoder, ASPP, decoder)"
        elif self.whole_file:
            whole = (
                " (the file is a whole segmentation model, but only its encoder loaded: its "
                "ASPP and decoder are of another layout, so this DeepLabV3+'s start fresh)"
            )
        return (
            f"pretrained {what}{whole} from {self.source}: {self.matched} tensors matched, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
            + (f" ({extra})" if extra else "")
            + (f", {len(self.mismatched)} of another shape" if self.mismatched else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "sha256": self.sha256,
            "matched": self.matched,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
            "scope": self.scope,
            "whole_file": self.whole_file,
        }


def canonical(key: str) -> str:
    """`key` without leading wrapper parts (`module.encoder.layer1.0.conv1.weight` ->
    `layer1.0.conv1.weight`)."""
    parts = key.split(".")
    while len(parts) > 1 and parts[0] in WRAPPERS:
        parts = parts[1:]
    return ".".join(parts)


def is_file_source(source: str) -> bool:
    """A path (existing, or named like a weights file) rather than a timm / HF model name."""
    path = Path(source).expanduser()
    return path.exists() or source.endswith(FILE_SUFFIXES) or source.startswith(("/", ".", "~"))


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a PyTorch checkpoint, never unpickling code."""
    if not path.is_file():
        raise ConfigError(f"{path}: pretrained weights file not found; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or unsafe: the message says which and what to do
        raise ConfigError(
            f"{path}: not a readable weights file ({type(exc).__name__}: {str(exc)[:200]}); "
            "give a .safetensors file or a PyTorch state dict saved with torch.save"
        ) from exc
    return _tensors_of(obj, path)


def _tensors_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint (bare, or under a usual container key)."""
    for _ in range(3):  # {"state_dict": {...}} or {"model": {"state_dict": ...}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in CONTAINERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise ConfigError(
            f"{path}: holds no state dict (a {type(obj).__name__}); save model.state_dict()"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"{path}: holds no tensors; save model.state_dict()")
    return tensors


def timm_weights(name: str) -> dict[str, torch.Tensor]:
    """The pretrained state dict of timm model `name` (timm's download and cache; online only)."""
    import timm

    offline = ""
    try:
        with _offline_unless_reachable() as offline:
            model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # offline, unknown name, no weights: one line with the fix
        why = " ".join(str(exc).split()).split(". ")[0][:200]  # its first sentence, one line
        raise ConfigError(
            f"could not load pretrained weights {name!r} through timm ({type(exc).__name__}: "
            f"{why}); {offline + '; ' if offline else ''}where this machine cannot download "
            f"them, fetch "
            f"model.safetensors from https://huggingface.co/{hub_id(name)} on a machine that "
            "is online and pass the file's path to --pretrained / --seg-pretrained"
        ) from exc
    return {k: v.detach() for k, v in model.state_dict().items()}


#: Environment variables of a proxy: with one, a direct connection says nothing.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether a connection to the Hugging Face endpoint opens (True behind a proxy: the proxy
    decides). One quick try, so an offline machine does not wait through the Hub client's
    retries (about a minute, a warning line each) before the one error line."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _offline_unless_reachable() -> Iterator[str]:
    """The Hub client in offline mode (timm's cache only) while the endpoint is unreachable;
    yields why it is offline ("" when it is not)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        yield "HF_HUB_OFFLINE is set"
        return
    if hub_reachable():
        yield ""
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield f"{constants.ENDPOINT} is not reachable from this machine"
    finally:
        constants.HF_HUB_OFFLINE = False


def hub_id(name: str) -> str:
    """The Hugging Face repository timm takes `name`'s weights from (a guess when unknown)."""
    from timm.models import get_pretrained_cfg

    name = name.removeprefix("hf-hub:").removeprefix("hf_hub:")
    if "/" in name:
        return name
    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # an unknown name: point at timm's organisation
        cfg = None
    return str(getattr(cfg, "hf_hub_id", None) or f"timm/{name}")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and bytes (sorted by name): the identity of weights without a file."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(
            tensors[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


#: Leading key parts that only a whole segmentation model has (smp's DeepLabV3+).
MODEL_PARTS = ("decoder", "segmentation_head")


def holds_whole_model(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a whole smp segmentation model, not an encoder alone."""
    return any(canonical(k).split(".")[0] in MODEL_PARTS for k in tensors)


def load_pretrained(
    module: nn.Module, source: str, *, whole: nn.Module | None = None
) -> PretrainedReport:
    """Copy the tensors of `source` (file or timm name) into `module` where names and shapes
    match; returns the report. With `whole` (the smp model `module` is the encoder of), a
    file holding a whole segmentation model goes into `whole` instead. Refuses (ConfigError)
    when nothing matches."""
    if is_file_source(source):
        path = Path(source).expanduser()
        tensors, kind, sha = read_weights_file(path), "file", file_sha256(path)
    else:
        tensors, kind = timm_weights(source), "timm"
        sha = tensors_sha256(tensors)
    whole_file = whole is not None and holds_whole_model(tensors)
    if whole is not None and whole_file:
        module = whole
    target = module.state_dict()
    by_name = {canonical(k): k for k in target}
    found: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in tensors.items():
        name = by_name.get(canonical(key))
        if name is None:
            unexpected.append(key)
        elif value.shape != target[name].shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[name].shape)}")
        else:
            found[name] = value
    into = "model" if module is whole else "encoder"
    if not found:
        raise ConfigError(
            f"{source}: none of its {len(tensors)} tensors matches the {into} (its keys look "
            f"like {sorted(tensors)[:3]}, the {into}'s like {sorted(target)[:3]}); give "
            "weights of the same architecture as --encoder / --seg-encoder"
        )
    beyond_encoder = module is whole and any(not n.startswith("encoder.") for n in found)
    scope = "model" if beyond_encoder else "encoder"
    with torch.no_grad():
        for name, value in found.items():
            target[name].copy_(value.to(target[name].dtype))
    missing = sorted(k for k in target if k not in found)
    return PretrainedReport(
        source, kind, sha, len(found), missing, sorted(unexpected), mismatched, scope, whole_file
    )
