"""Resumable training checkpoints without pickle: safetensors for tensors, JSON for the rest.

`torch.save` checkpoints execute code when loaded; ours never do. The optimizer state is split:
its tensors (moments, step counters) go to safetensors, its scalars and param groups to JSON.
A save writes its tensors to files of its own (`weights.<n>.safetensors`), then `state.json`,
which names them, by one rename; the previous save's files go only after that. So a save
interrupted anywhere (Ctrl-C, SIGKILL, a full disk) leaves the previous checkpoint whole: its
state, weights and optimizer of one epoch, never a newer epoch's weights under an older state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from wsi_segment.errors import ModelError
from wsi_segment.models.tensor_files import write_tensors

STATE = "state.json"  # names the checkpoint's tensor files: what makes it one
LEGACY_FILES = {"weights": "weights.safetensors", "optimizer": "optimizer.safetensors"}


def _split_optimizer(
    state: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in state["param_groups"]
    ]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Write model weights, optimizer state and `state` (epoch, schedule, history) to `folder`
    as one checkpoint (the module docstring says how an interrupted save keeps the last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save = _payload(folder).get("save", 0) + 1 if (folder / STATE).is_file() else 1
    files = {kind: f"{kind}.{save}.safetensors" for kind in ("weights", "optimizer")}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    _atomic(folder / files["weights"], lambda p: write_tensors(weights, p))
    _atomic(folder / files["optimizer"], lambda p: write_tensors(opt_tensors, p))
    payload = {"state": state, "optimizer": opt_meta, "save": save, "files": files}
    _atomic(folder / STATE, lambda p: p.write_text(json.dumps(payload, indent=1)))
    for old in folder.glob("*.safetensors"):  # earlier saves', and an interrupted one's
        if old.name not in files.values():
            old.unlink(missing_ok=True)


def load_checkpoint(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any] | None:
    """Restore `model` (and `optimizer`) from `folder`; returns the saved state, or None if absent."""
    folder = Path(folder)
    if not (folder / STATE).is_file():
        return None
    try:
        payload = _payload(folder)
        files = payload.get("files", LEGACY_FILES)  # a work folder of an earlier version
        model.load_state_dict(load_file(str(folder / files["weights"])))
        if optimizer is not None:
            tensors = load_file(str(folder / files["optimizer"]))
            optimizer.load_state_dict(_join_optimizer(tensors, payload["optimizer"]))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"{folder}: checkpoint unreadable or from another configuration ({exc}); "
            "delete the folder to start this stage again"
        ) from exc
    state: dict[str, Any] = payload["state"]
    return state


def _payload(folder: Path) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((folder / STATE).read_text())
    return payload
