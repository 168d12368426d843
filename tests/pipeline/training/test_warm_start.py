"""The pretrained start is loaded once: a resumed stage takes its weights from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wsi_segment.errors import ConfigError
from wsi_segment.models.checksum import file_sha256
from wsi_segment.pipeline.training.checkpoints import save_checkpoint
from wsi_segment.pipeline.training.warm_start import pretrained_record, warm_start


def test_loaded_recorded_then_kept_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "w.safetensors"
    save_file(
        {"module.weight": torch.arange(4.0).view(2, 2), "module.bias": torch.ones(2)}, str(src)
    )
    layer, work = torch.nn.Linear(2, 2), tmp_path / "stage1"
    warm_start(layer, str(src), work, "classifier encoder", work)
    assert torch.equal(layer.weight, torch.arange(4.0).view(2, 2))
    record = pretrained_record(work)
    assert record is not None and record["sha256"] == file_sha256(src) and record["matched"] == 2
    assert "2 tensors matched, 0 missing, 0 unexpected" in capsys.readouterr().out

    with torch.no_grad():
        layer.weight.fill_(7.0)  # an epoch of training
    save_checkpoint(work, layer, torch.optim.SGD(layer.parameters(), lr=0.1), {"epoch": 1})
    src.write_bytes(b"not read again")
    warm_start(layer, str(src), work, "classifier encoder", work)
    assert torch.equal(layer.weight, torch.full((2, 2), 7.0))  # the checkpoint's, not the file's
    assert pretrained_record(work) == record
    assert "resuming from" in capsys.readouterr().out

    assert json.loads((work / "state.json").read_text())["state"] == {"epoch": 1}


def test_a_checkpoint_that_started_otherwise_is_refused(tmp_path: Path) -> None:
    """Resuming would ignore the option and model.json would name a start the weights lack:
    another file, random weights where a file is named, a file where none is named."""
    src, other = tmp_path / "w.safetensors", tmp_path / "other.safetensors"
    for f in (src, other):
        save_file({"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, str(f))
    layer = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    pre, scratch = tmp_path / "pre", tmp_path / "scratch"
    warm_start(layer, str(src), pre, "classifier encoder", pre)
    save_checkpoint(pre, layer, opt, {"epoch": 1})
    save_checkpoint(scratch, layer, opt, {"epoch": 1})
    record = pretrained_record(pre)

    for work, source, was, now in (
        (pre, str(other), str(src), str(other)),
        (pre, None, str(src), "random weights"),
        (scratch, str(src), "random weights", str(src)),
    ):
        with pytest.raises(ConfigError) as err:
            warm_start(layer, source, work, "classifier encoder", work)
        assert f"started from {was} and would resume" in str(err.value)
        assert f"this run starts it from {now}; delete {work}" in str(err.value)
    assert pretrained_record(pre) == record and pretrained_record(scratch) is None
    warm_start(layer, None, scratch, "classifier encoder", scratch)  # the same start resumes


def test_from_scratch_without_a_checkpoint_drops_an_old_record(tmp_path: Path) -> None:
    src, work = tmp_path / "w.safetensors", tmp_path / "stage1"
    save_file({"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, str(src))
    warm_start(torch.nn.Linear(2, 2), str(src), work, "classifier encoder", work)
    warm_start(torch.nn.Linear(2, 2), None, work, "classifier encoder", work)
    assert pretrained_record(work) is None and not (work / "pretrained.json").exists()
