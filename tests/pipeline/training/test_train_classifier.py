"""Stage 1: an interrupted run resumes from its last checkpoint and ends where an uninterrupted one does."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from wsi_segment.errors import ConfigError, SlideInterrupted
from wsi_segment.pipeline.cancellation import Cancellation
from wsi_segment.pipeline.training.datasets import open_dataset
from wsi_segment.pipeline.training.recipes import RECIPES
from wsi_segment.pipeline.training.train_classifier import (
    ClassifierConfig,
    build,
    classifier_history,
    scheduled_lr,
    train_classifier,
)
from wsi_segment.pipeline.training.train_config import TrainConfig, classifier_config
from wsi_segment.synthetic.dataset import SyntheticSpec, make_synthetic_dataset

CFG = ClassifierConfig(encoder="resnet10t", head="pda", epochs=2, batch_size=4, seed=1, max_steps=1)


class Interrupt(Exception):
    """Raised from the epoch hook, like Ctrl-C arriving right after a checkpoint."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("syn")
    return open_dataset(make_synthetic_dataset(root, SyntheticSpec(8, 1, 1, 64, seed=5)))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_continues_from_last_checkpoint(tiny, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    full = _weights(train_classifier(tiny, CFG, tmp_path / "full", cpu))

    def stop_after_1(epoch: int, state: dict) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_classifier(tiny, CFG, tmp_path / "cut", cpu, on_epoch=stop_after_1)
    trained: list[int] = []
    resumed = train_classifier(
        tiny, CFG, tmp_path / "cut", cpu, on_epoch=lambda e, s: trained.append(e)
    )
    assert trained == [2]  # only the missing epoch ran
    assert resumed.head.schedule.epoch == 2
    got = _weights(resumed)
    assert all(torch.equal(full[k], got[k]) for k in full)

    again: list[int] = []
    train_classifier(tiny, CFG, tmp_path / "cut", cpu, on_epoch=lambda e, s: again.append(e))
    assert again == []  # a finished stage only loads


def test_poly_lr_schedule() -> None:
    lrs = [scheduled_lr(1e-3, "poly", s, 10) for s in range(11)]
    assert lrs[0] == 1e-3 and lrs[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[5] == pytest.approx(1e-3 * 0.5**0.9)
    assert scheduled_lr(1e-3, "constant", 7, 10) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        scheduled_lr(1e-3, "cosine", 0, 10)


def test_classifier_output_stride_reaches_the_model(tiny, tmp_path: Path) -> None:
    cfg = ClassifierConfig(
        encoder="resnet10t", epochs=1, batch_size=4, max_steps=1, output_stride=8
    )
    model = train_classifier(tiny, cfg, tmp_path / "os8", torch.device("cpu"))
    assert model.config()["backbone"]["output_stride"] == 8
    train_cfg = TrainConfig(data=tmp_path, out=tmp_path / "m", classifier_output_stride=8)
    assert classifier_config(train_cfg).output_stride == 8
    assert classifier_config(TrainConfig(data=tmp_path, out=tmp_path / "m")).output_stride == 16


def test_dropout_and_pda_schedule_reach_the_head(tiny, tmp_path: Path) -> None:
    cfg = ClassifierConfig(
        encoder="resnet10t", epochs=1, batch_size=4, max_steps=1, pda_schedule="official",
        pda_warmup=0, dropout=0.25,
    )  # fmt: skip
    head = train_classifier(tiny, cfg, tmp_path / "tuned", torch.device("cpu")).head
    assert head.dropout.p == 0.25
    assert (head.schedule.sigma, head.schedule.warmup_epochs, head.schedule.floor) == (
        0.98, 0, 0.65,
    )  # fmt: skip
    assert head.schedule.epoch == 1  # finished: the schedule stands after its last epoch
    default = classifier_config(TrainConfig(data=tmp_path, out=tmp_path / "m"))
    assert (default.dropout, default.pda_schedule) == (0.5, "paper")
    with pytest.raises(ConfigError, match="pda head only"):
        train_classifier(
            tiny, ClassifierConfig(head="cam", pda_sigma=0.9), tmp_path / "x", torch.device("cpu")
        )


def test_paper_recipe_resumes_to_the_same_weights(tiny, tmp_path: Path) -> None:
    """SGD with four-way parameter groups and frozen BatchNorm: the optimiser state (momentum
    buffers, groups) survives the checkpoint, so a resumed run ends where a whole one does."""
    cfg = replace(CFG, optim=RECIPES["paper"].stage1, recipe="paper")
    cpu = torch.device("cpu")
    full = _weights(train_classifier(tiny, cfg, tmp_path / "full", cpu))

    def stop_after_1(epoch: int, state: dict) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_classifier(tiny, cfg, tmp_path / "cut", cpu, on_epoch=stop_after_1)
    got = _weights(train_classifier(tiny, cfg, tmp_path / "cut", cpu))
    assert all(torch.equal(full[k], got[k]) for k in full)
    fresh = _weights(build(cfg, tiny.num_classes))
    bn = [k for k in full if "running" in k or k.startswith("backbone.body.layer1")]
    assert bn and all(torch.equal(full[k], fresh[k]) for k in bn)  # frozen through training


def test_a_cancelled_run_stops_at_the_next_step_and_resumes_to_the_same_weights(
    tiny, tmp_path: Path
) -> None:
    """The run's token (`pipeline.cancellation`; a stop Python dropped, `flows.dropped_stops`)
    cancelled once epoch 1 is saved: epoch 2's first step raises its stop, epoch 2 is never
    saved, and a rerun resumes to the weights of a run never stopped."""
    cpu = torch.device("cpu")
    full = _weights(train_classifier(tiny, CFG, tmp_path / "full", cpu))
    stop = Cancellation()
    with pytest.raises(SlideInterrupted):
        train_classifier(
            tiny,
            CFG,
            tmp_path / "cut",
            cpu,
            on_epoch=lambda epoch, state: stop.cancel(SlideInterrupted),
            cancel=stop,
        )
    assert classifier_history(tmp_path / "cut") == [
        {"epoch": 1, "loss": classifier_history(tmp_path / "full")[0]["loss"]}
    ]
    got = _weights(train_classifier(tiny, CFG, tmp_path / "cut", cpu))
    assert all(torch.equal(full[k], got[k]) for k in full)
