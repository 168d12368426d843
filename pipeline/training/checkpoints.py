"""Resumable training checkpoints without pickle: safetensors for tensors, JSON for the rest.

`torch.save` checkpoints execute code when loaded; ours never do. The optimizer state is split:
its tensors (moments, step counters) go to safetensors, its scalars and param groups to JSON.
Files are written to a temporary name and renamed, so an interrupted save leaves the previous
checkpoint intact.
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
    """Write model weights, optimizer state and `state` (epoch, schedule, history) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    _atomic(folder / "weights.safetensors", lambda p: write_tensors(weights, p))
    _atomic(folder / "optimizer.safetensors", lambda p: write_tensors(opt_tensors, p))
    # state.json last: its presence marks a complete checkpoint
    payload = {"state": state, "optimizer": opt_meta}
    _atomic(folder / "state.json", lambda p: p.write_text(json.dumps(payload, indent=1)))


def load_checkpoint(
    folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any] | None:
    """Restore `model` (and `optimizer`) from `folder`; returns the saved state, or None if absent."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        return None
    try:
        payload = json.loads((folder / "state.json").read_text())
        model.load_state_dict(load_file(str(folder / "weights.safetensors")))
        if optimizer is not None:
            tensors = load_file(str(folder / "optimizer.safetensors"))
            optimizer.load_state_dict(_join_optimizer(tensors, payload["optimizer"]))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"{folder}: checkpoint unreadable or from another configuration ({exc}); "
            "delete the folder to start this stage again"
        ) from exc
    state: dict[str, Any] = payload["state"]
    return state
