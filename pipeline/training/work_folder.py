"""A training's work folder: resumed only by the same training, of the same code's meaning.

Every stage keeps its state there (checkpoints, pseudo masks), so a rerun continues where an
interrupted one stopped. That is right only when the rerun trains the same thing: the same
settings (`RESUME_MAY_CHANGE` aside) and checkpoints and masks that mean what this version's
code makes of them (`TRAINING_FORMAT`). Anything else is refused before a byte is written:
resuming would mix two trainings, and model.json would name settings its weights never had.
`wsi-segment train` and the Prefect train flow open the folder here, and only here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.training.train_config import TrainConfig, work_dir

CONFIG_NAME = "config.json"
# What a work folder's checkpoints and pseudo masks mean; bumped when the code trains or
# labels differently from the same settings. 2 (2026-11-28): the segmenter's ASPP rates
# follow its output stride, ReLU'd CAM methods leave evidence-free tissue unlabelled, the
# PCAM head drops its pooled feature. 1: every folder written before (none recorded it).
TRAINING_FORMAT = 2
FORMAT_KEY = "training_format"
# Settings a resumed run may change: where the model goes, how fast it runs and how its
# finished weights are stored (--fp16), not what they are (the pretrained starts have their
# own check: `warm_start.check_start`).
RESUME_MAY_CHANGE = frozenset(
    {"out", "device", "threads", "name", "provenance", "work_dir", "fp16"}
    | {"pretrained", "seg_pretrained"}
)


def open_work_folder(cfg: TrainConfig) -> Path:
    """The work folder of `cfg`, created, with its settings recorded; ConfigError where it
    holds another training (other settings, or an older format) to resume."""
    work = work_dir(cfg)
    _refuse_another_training(cfg, work)
    work.mkdir(parents=True, exist_ok=True)
    record = {**_settings(cfg), FORMAT_KEY: TRAINING_FORMAT}
    (work / CONFIG_NAME).write_text(json.dumps(record, indent=1))
    return work


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg` as config.json records it (paths as text)."""
    loaded: dict[str, Any] = json.loads(json.dumps(asdict(cfg), default=str))
    return loaded


def _refuse_another_training(cfg: TrainConfig, work: Path) -> None:
    saved_file = work / CONFIG_NAME
    if not saved_file.is_file():
        return
    try:
        saved = json.loads(saved_file.read_text())
    except (OSError, ValueError):
        return  # unreadable: the checkpoints' own checks decide
    fix = f"delete {work} to train again, or give another --work-dir"
    made = saved.get(FORMAT_KEY, 1)
    if made != TRAINING_FORMAT:
        raise ConfigError(
            f"{work}: this work folder was trained by another version of wsi-segment "
            f"(training format {made}, this version's {TRAINING_FORMAT}), whose checkpoints "
            f"and pseudo masks mean something else; resuming would mix them; {fix}"
        )
    now = _settings(cfg)
    changed = sorted(
        k for k in now.keys() & saved.keys() if k not in RESUME_MAY_CHANGE and now[k] != saved[k]
    )
    if changed:
        said = ", ".join(f"--{k.replace('_', '-')} {saved[k]} -> {now[k]}" for k in changed)
        raise ConfigError(
            f"{work}: this work folder was trained with other settings ({said}); resuming "
            f"would mix them and model.json would name settings its weights never had; {fix}"
        )
