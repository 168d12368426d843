"""Prefect flow for training: classifier -> pseudo masks -> segmenter -> model folder.

Each stage is a task; each keeps its state in the work folder (`pipeline.training.train_stages`),
so a flow run that was interrupted (preempted node, Ctrl-C) resumes where it stopped when
run again with the same arguments. Only transient I/O errors are retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from wsi_segment.errors import ConfigError  # noqa: E402
from wsi_segment.flows.dropped_stops import stop_on_dropped  # noqa: E402
from wsi_segment.flows.flow_process import prepare_flow_process  # noqa: E402
from wsi_segment.flows.slide_flow import stage_task  # noqa: E402
from wsi_segment.models.classifier import PatchClassifier  # noqa: E402
from wsi_segment.pipeline.cancellation import CancelToken  # noqa: E402
from wsi_segment.pipeline.training import train_stages  # noqa: E402
from wsi_segment.pipeline.training.train import TrainConfig  # noqa: E402


@stage_task("open-dataset")
def open_dataset(cfg: TrainConfig, cancel: CancelToken) -> train_stages.TrainRun:
    return train_stages.start(cfg, cancel)


@stage_task("stage-1-classifier")
def classifier(run: train_stages.TrainRun) -> PatchClassifier:
    return train_stages.stage1_classifier(run)


@stage_task("stage-2-pseudo-masks")
def pseudo_masks(run: train_stages.TrainRun, model: PatchClassifier) -> list[Path]:
    return train_stages.stage2_pseudo_masks(run, model)


@stage_task("stage-3-segmenter")
def segmenter(
    run: train_stages.TrainRun, pseudo_dirs: list[Path], model: PatchClassifier
) -> dict[str, Any]:
    _, state = train_stages.stage3_segmenter(run, pseudo_dirs, model)
    return state


@stage_task("model-folder")
def model_folder(run: train_stages.TrainRun) -> Path:
    return train_stages.write_model(run)


def make_train_config(data: str, out: str, options: dict[str, Any] | None) -> TrainConfig:
    """TrainConfig from JSON-friendly flow parameters."""
    values = dict(options or {})
    if values.get("work_dir"):
        values["work_dir"] = Path(values["work_dir"])
    try:
        return TrainConfig(data=Path(data), out=Path(out), **values)
    except TypeError as exc:
        raise ConfigError(f"unknown training option in {sorted(values)}: {exc}") from exc


@flow(name="train-model")
def train_model(data: str, out: str, options: dict[str, Any] | None = None) -> str:
    """Train a model from a WSSS dataset folder into the model folder `out`; returns it.

    `options` holds other `pipeline.training.train.TrainConfig` fields (epochs, encoder, head,
    cam_method, ...). A deployment's run finishes even if its worker dies
    (`flows.worker_pipes`); a stop Python drops while it trains stops it at the next step
    all the same (`flows.dropped_stops`), the work folder kept for a rerun to resume.
    """
    prepare_flow_process()  # worker pipes, open files, address space
    cfg = make_train_config(data, out, options)
    with stop_on_dropped() as stop:
        run = open_dataset(cfg, stop)
        model = classifier(run)
        pseudo_dirs = pseudo_masks(run, model)
        state = segmenter(run, pseudo_dirs, model)
        folder = model_folder(run)
    best = state.get("best") or {}
    create_markdown_artifact(
        f"### Model {folder}\n\nbest epoch: {best.get('epoch')}, score: {best.get('score')}\n\n"
        f"work folder (checkpoints, pseudo masks): {run.work}\n",
        key="train-model",
        description=f"Model trained from {data}",
    )
    get_run_logger().info("model written to %s", folder)
    return str(folder)
