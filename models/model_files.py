"""A model folder read and verified, its network built only when something runs it.

A warm OpenVINO load runs no torch network: the compiled graph and the checks' verdicts are
in the runtime cache, keyed by the model's identity, and the engine needs only the identity,
the metadata and the validation patches' digest. Building the network imports timm,
torchvision and segmentation-models-pytorch (most of a small slide's start), so it waits for
the first caller that needs it: torch's runtime, an export, or a check computed on a cold
cache. Importing this module imports no torch.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from wsi_segment.errors import ModelError

from .checksum import file_sha256, model_identity
from .meta import ModelMeta, load_model_json, read_weights, weights_path

if TYPE_CHECKING:
    from .segmentation_model import SegmentationModel


class ModelSource(Protocol):
    """What a runtime opens: a model's metadata, identity ('' for one built in memory),
    validation patches, and its network on demand (`ModelFiles`: a folder, built at the
    first call; `BuiltModel`: a network already built)."""

    @property
    def meta(self) -> ModelMeta: ...

    @property
    def identity(self) -> str: ...

    @property
    def validation_patches(self) -> np.ndarray | None:
        """uint8 (N, 3, T, T), or None when the folder has none."""
        ...

    def network(self) -> SegmentationModel: ...

    @property
    def network_built(self) -> bool:
        """Whether the network is built (summary.json `precision.runtime_cache`)."""
        ...


@dataclass(frozen=True, eq=False)  # one object, one model: as the network itself compares
class BuiltModel:
    """A network already built, as a runtime's source: loaded whole from a folder
    (`models.bundle.load_bundle`: the identity of the bytes parsed, the folder's validation
    patches) or built in memory (training, tests: no identity, no patches)."""

    built: SegmentationModel
    identity: str = ""  # sha256 of the model.json and weight bytes (models.checksum)
    validation_patches: np.ndarray | None = None  # uint8 (N, 3, T, T)

    @property
    def meta(self) -> ModelMeta:
        """The network's metadata."""
        return self.built.meta

    def network(self) -> SegmentationModel:
        """The network, as built."""
        return self.built

    @property
    def network_built(self) -> bool:
        """Always: it was built before it was handed on."""
        return True


def verified_weights(folder: Path, doc: dict[str, Any]) -> tuple[Path, bytes, str]:
    """The weights file model.json names, its bytes and their sha256 (parsed from the bytes
    hashed: read once), refused where they do not match the sha256 model.json records."""
    path = weights_path(folder, doc)
    data = read_weights(path, path.read_bytes)
    sha = hashlib.sha256(data).hexdigest()
    _check_sha(path, sha, doc)
    return path, data, sha


def weights_sha256(folder: Path, doc: dict[str, Any]) -> str:
    """`verified_weights`' sha256, streamed: the file is never held in memory whole."""
    path = weights_path(folder, doc)
    sha = read_weights(path, lambda: file_sha256(path))
    _check_sha(path, sha, doc)
    return sha


def _check_sha(path: Path, sha: str, doc: dict[str, Any]) -> None:
    expected = (doc.get("weights") or {}).get("sha256")
    if expected and sha != expected:
        raise ModelError(
            f"{path} does not match the sha256 in model.json (file replaced or corrupt); "
            "re-save the model"
        )


class ModelFiles:
    """A model folder's metadata, identity and validation patches, read and checked; its
    network is built on `device` at the first `network()` call, once per instance."""

    def __init__(self, folder: Path, device: str) -> None:
        from .validation_patches import load_patches

        self.folder, self.device = folder, device
        doc, self.meta, json_sha = load_model_json(folder)
        self.identity = model_identity(json_sha, weights_sha256(folder, doc))
        self.validation_patches = load_patches(folder, doc, int(self.meta.tile_size))
        self._network: SegmentationModel | None = None
        self._lock = threading.Lock()  # one build, whichever thread asks first

    def network(self) -> SegmentationModel:
        """The network with its weights on `device`: built from the same files, which must
        still be the bytes this instance read (else one ModelError, nothing run)."""
        with self._lock:
            if self._network is None:
                from .bundle import load_bundle

                loaded = load_bundle(self.folder, self.device)
                if loaded.identity != self.identity:
                    raise ModelError(
                        f"{self.folder}: the model files changed while the model loaded; "
                        "rerun once they stay unchanged"
                    )
                self._network = loaded.network()
            return self._network

    @property
    def network_built(self) -> bool:
        """Whether `network()` has built the network (a warm OpenVINO load never does:
        summary.json `precision.runtime_cache`)."""
        return self._network is not None

    def __getstate__(self) -> dict[str, Any]:
        """A copy builds its own network where it runs."""
        return {**self.__dict__, "_network": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
