"""The training flow for real on a tiny synthetic dataset: same weights as plain `train()`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

OPTIONS = {
    "epochs": 1,
    "seg_epochs": 1,
    "encoder": "resnet10t",
    "seg_encoder": "resnet10t",
    "batch_size": 4,
    "max_steps": 1,
    "decoder_channels": 16,
    "device": "cpu",
    "threads": 1,
    "tile_size": 64,
    "dropout": 0.25,
    "pda_schedule": "official",
    "pda_floor": 0.7,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsi_segment.pipeline.synthetic_dataset import SyntheticSpec, make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("wsss"), SyntheticSpec(8, 1, 1, 64, seed=5)
    )


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_train_flow_matches_plain_train_and_resumes(
    prefect_harness: None, dataset: Path, tmp_path: Path
) -> None:
    import torch

    from wsi_segment.flows.train_flow import make_train_config, train_model
    from wsi_segment.pipeline.train import train

    plain = train(make_train_config(str(dataset), str(tmp_path / "plain"), OPTIONS))
    folder = Path(train_model(data=str(dataset), out=str(tmp_path / "flow"), options=OPTIONS))
    assert (folder / "model.json").is_file()
    a, b = _weights(plain), _weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    head = json.loads((folder / "model.json").read_text())["architecture"]["classifier"]["head"]
    assert head["dropout"] == 0.25
    assert (head["schedule"]["sigma"], head["schedule"]["floor"]) == (0.98, 0.7)

    # a rerun finds every stage finished: checkpoints are not rewritten
    stage1 = tmp_path / "flow.work" / "stage1" / "state.json"
    before = stage1.stat().st_mtime_ns
    train_model(data=str(dataset), out=str(tmp_path / "flow"), options=OPTIONS)
    assert stage1.stat().st_mtime_ns == before
