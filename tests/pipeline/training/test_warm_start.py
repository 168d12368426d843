"""The pretrained start is loaded once: a resumed stage takes its weights from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

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

    warm_start(layer, None, work, "classifier encoder", work)  # from scratch: no stale record
    assert pretrained_record(work) is None and not (work / "pretrained.json").exists()
    assert json.loads((work / "state.json").read_text())["state"] == {"epoch": 1}
