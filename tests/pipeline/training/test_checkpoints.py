"""Checkpoints round-trip model and optimizer state exactly, without pickle."""

from __future__ import annotations

from collections.abc import Callable
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
        "optimizer.1.safetensors",
        "state.json",
        "weights.1.safetensors",
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


def test_a_save_interrupted_anywhere_leaves_the_last_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing between the files of a save replaced the weights and left the older
    state.json: the rerun trained that epoch again on the newer weights, silently another
    model. Each point of the save is interrupted in turn; the checkpoint read back is epoch
    1's, its weights with it; the next save tidies what the interrupted one left."""
    from wsi_segment.pipeline.training import checkpoints

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    _step(model, opt)
    save_checkpoint(tmp_path, model, opt, {"epoch": 1})
    epoch1 = model.weight.detach().clone()
    _step(model, opt)
    real_atomic = checkpoints._atomic

    def interrupted_at(stop_at: int) -> Callable[[Path, Callable[[Path], object]], None]:
        """`_atomic`, raising KeyboardInterrupt at its call number `stop_at` (from 0)."""
        calls: list[Path] = []

        def atomic(path: Path, write: Callable[[Path], object]) -> None:
            calls.append(path)
            if len(calls) > stop_at:
                raise KeyboardInterrupt
            real_atomic(path, write)

        return atomic

    for stop_at in range(3):  # before the weights' rename, the optimizer's, state.json's
        monkeypatch.setattr(checkpoints, "_atomic", interrupted_at(stop_at))
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path, model, opt, {"epoch": 2})
        monkeypatch.setattr(checkpoints, "_atomic", real_atomic)
        back = torch.nn.Linear(3, 2)
        assert load_checkpoint(tmp_path, back, torch.optim.AdamW(back.parameters())) == {"epoch": 1}
        assert torch.equal(back.weight, epoch1) and not torch.equal(back.weight, model.weight)
    save_checkpoint(tmp_path, model, opt, {"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "optimizer.2.safetensors",
        "state.json",
        "weights.2.safetensors",
    ]


def test_a_checkpoint_of_an_earlier_version_resumes(tmp_path: Path) -> None:
    """Work folders written before the files were numbered name them weights.safetensors."""
    import json

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, model, opt, {"epoch": 3})
    for kind in ("weights", "optimizer"):
        (tmp_path / f"{kind}.1.safetensors").rename(tmp_path / f"{kind}.safetensors")
    state = json.loads((tmp_path / "state.json").read_text())
    del state["files"], state["save"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    back = torch.nn.Linear(3, 2)
    assert load_checkpoint(tmp_path, back, torch.optim.SGD(back.parameters(), lr=0.1)) == {
        "epoch": 3
    }
    assert torch.equal(back.weight, model.weight)
