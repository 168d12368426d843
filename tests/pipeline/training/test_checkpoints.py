"""Checkpoints round-trip model and optimizer state exactly, without pickle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsi_segment.errors import ModelError
from wsi_segment.pipeline.training.checkpoints import load_checkpoint, save_checkpoint


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.ones(2, 3)).sum().backward()
    opt.step()


def test_round_trip_then_identical_next_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    opt_a = torch.optim.AdamW(a.parameters(), lr=0.1)
    _step(a, opt_a)
    save_checkpoint(tmp_path, a, opt_a, {"epoch": 1, "history": [{"loss": 0.5}]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "optimizer.safetensors",
        "state.json",
        "weights.safetensors",
    ]
    b = torch.nn.Linear(3, 2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1)
    assert load_checkpoint(tmp_path, b, opt_b) == {"epoch": 1, "history": [{"loss": 0.5}]}
    _step(a, opt_a)
    _step(b, opt_b)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_missing_is_none_and_mismatch_is_clear(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    assert load_checkpoint(tmp_path / "none", model) is None
    save_checkpoint(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), {"epoch": 1})
    with pytest.raises(ModelError, match="delete the folder"):
        load_checkpoint(tmp_path, torch.nn.Linear(4, 2))
