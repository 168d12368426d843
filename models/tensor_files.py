"""Write safetensors files with the permissions any file the user writes gets.

safetensors' own `save_file` creates its file 0600 whatever the umask, so a model trained by
one member of a lab could not be read by the service user that runs the nightly batch (the
group's read bit missing). Serialising to bytes and writing them like any other file leaves
the mode to the umask (and to a setgid folder's group), as for model.json beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save


def write_tensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """`tensors` (contiguous, CPU) to the safetensors file `path`, mode from the umask."""
    Path(path).write_bytes(save(dict(tensors), metadata=metadata))
