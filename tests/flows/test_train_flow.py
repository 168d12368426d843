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
    from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset

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
    from wsi_segment.pipeline.training.train import train

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


@pytest.mark.parametrize(
    "cli_extra, options",
    [
        ([], {}),
        (["--epochs", "3", "--encoder", "resnet10t"], {"epochs": 3, "encoder": "resnet10t"}),
        (
            ["--epochs", "3", "--seg-epochs", "5", "--seg-encoder", "resnet34"],
            {"epochs": 3, "seg_epochs": 5, "seg_encoder": "resnet34"},
        ),
        (["--cam-method", "scorecam"], {"cam_method": "scorecam"}),
        (["--recipe", "paper", "--momentum", "0.5"], {"recipe": "paper", "momentum": 0.5}),
        (["--recipe", "official"], {"recipe": "official"}),
        (["--recipe", "official", "--batch-size", "8"], {"recipe": "official", "batch_size": 8}),
        (
            ["--head", "lficam", "--cam-method", "lficam"],
            {"head": "lficam", "cam_method": "lficam"},
        ),
    ],
)
def test_cli_and_flow_build_the_same_training_config(
    tmp_path: Path, cli_extra: list[str], options: dict
) -> None:
    """One source of defaults: the segmenter follows --epochs / --encoder through both doors."""
    from wsi_segment.flows.cli import build_parser
    from wsi_segment.flows.cli_train import config_from_args
    from wsi_segment.flows.train_flow import make_train_config

    data, out = tmp_path / "data", tmp_path / "m"
    args = build_parser().parse_args(["train", "--data", str(data), "--out", str(out), *cli_extra])
    from_cli = config_from_args(args)
    from_flow = make_train_config(str(data), str(out), options)
    assert from_cli == from_flow
    follows = 30 if options.get("recipe") == "official" else options.get("epochs", 20)
    assert from_cli.segmenter_epochs == options.get("seg_epochs", follows)
    assert from_cli.seg_encoder == options.get("seg_encoder", options.get("encoder", "resnet18"))


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"cam_method": "gradcam++"}, "--cam-method must be one of ['gradcam', 'cam', 'scorecam',"),
        ({"cam_method": "lficam"}, "--cam-method lficam needs --head lficam, not --head pda"),
        ({"cam_method": "lficam-ref"}, "--cam-method lficam-ref gives one class-agnostic map"),
    ],
)
def test_flow_refuses_a_cam_method_before_any_write(
    tmp_path: Path, options: dict, expected: str
) -> None:
    from wsi_segment.errors import ConfigError
    from wsi_segment.flows.train_flow import make_train_config
    from wsi_segment.pipeline.cancellation import NEVER_CANCELLED
    from wsi_segment.pipeline.training import train_stages

    cfg = make_train_config(str(tmp_path / "data"), str(tmp_path / "m"), options)
    with pytest.raises(ConfigError) as err:
        train_stages.start(cfg, NEVER_CANCELLED)
    assert expected in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_training_stages_retry_and_cache_as_the_slide_stages():
    """One set of task options: only transient I/O errors are retried, nothing is cached."""
    from wsi_segment.flows import slide_flow, train_flow
    from wsi_segment.pipeline.stage_retries import STAGE_RETRIES, STAGE_RETRY_DELAYS_S

    stages = (
        train_flow.open_dataset,
        train_flow.classifier,
        train_flow.pseudo_masks,
        train_flow.segmenter,
        train_flow.model_folder,
        slide_flow.open_and_tissue,
    )
    for stage in stages:
        assert stage.retries == STAGE_RETRIES
        assert stage.retry_delay_seconds == list(STAGE_RETRY_DELAYS_S)
        assert stage.retry_condition_fn is slide_flow.retry_if_transient
        assert stage.persist_result is False


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stop_dropped_while_training_stops_the_flow(
    prefect_harness: None, dataset: Path, tmp_path: Path, stop: str
) -> None:
    """A stop Python drops in the flow's thread once the dataset is open (a signal landing in
    a finaliser: a deployment's cancel, a terminal's Ctrl-C) stops the training at its next
    step, and the flow raises the stop itself: no classifier epoch, no model folder, the work
    folder kept for a rerun. Training used to run on to its end as if none had come."""
    import signal

    from prefect.exceptions import TerminationSignal

    from tests.flows.dropped_on_log import stop_dropped_on_log
    from wsi_segment.flows.train_flow import train_model

    raised = KeyboardInterrupt() if stop == "ctrl-c" else TerminationSignal(signal.SIGTERM)
    out = tmp_path / "model"
    # the first stage's end (open-dataset), logged in the flow's thread
    with (
        stop_dropped_on_log("prefect.task_runs", "Finished in state", raised) as drop,
        pytest.raises(type(raised)),
    ):
        train_model(data=str(dataset), out=str(out), options=OPTIONS)
    assert drop.fired
    ended = [m for m in drop.messages if "Finished in state" in m]  # each stage's end
    assert [m for m in ended if "Completed" in m] == [ended[0]], drop.messages
    assert not out.exists()
    work = tmp_path / "model.work"
    assert (work / "config.json").is_file() and not (work / "stage1" / "state.json").exists()


def test_the_flow_does_not_resume_a_work_folder_of_other_settings(
    dataset: Path, tmp_path: Path
) -> None:
    """The flow's first task recorded the new settings over the folder's and its stages went
    on from checkpoints trained with others (only `wsi-segment train` checked). Both open the
    folder through `work_folder.open_work_folder`: refused, nothing written."""
    from wsi_segment.errors import ConfigError
    from wsi_segment.flows.train_flow import make_train_config
    from wsi_segment.pipeline.cancellation import NEVER_CANCELLED
    from wsi_segment.pipeline.training import train_stages
    from wsi_segment.pipeline.training.work_folder import open_work_folder

    earlier = make_train_config(str(dataset), str(tmp_path / "m"), {**OPTIONS, "seed": 1})
    work = open_work_folder(earlier)
    saved = (work / "config.json").read_text()
    cfg = make_train_config(str(dataset), str(tmp_path / "m"), {**OPTIONS, "seed": 2})
    with pytest.raises(ConfigError, match=r"trained with other settings \(--seed 1 -> 2\)"):
        train_stages.start(cfg, NEVER_CANCELLED)
    assert [p.name for p in work.iterdir()] == ["config.json"]
    assert (work / "config.json").read_text() == saved
