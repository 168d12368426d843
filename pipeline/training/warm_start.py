"""Start an encoder from pretrained weights and keep the record for model.json.

The load report (source, sha256, matched / missing / unexpected keys) is printed and written
next to the stage's checkpoints, so the model folder written at the end (also by a resumed
run or the Prefect flow's last task) records exactly what the run started from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from wsi_segment.errors import ConfigError
from wsi_segment.models.pretrained import load_pretrained

RECORD = "pretrained.json"


def warm_start(
    encoder: nn.Module,
    source: str | None,
    work: Path,
    what: str,
    checkpoint: Path,
    *,
    whole: nn.Module | None = None,
) -> None:
    """Load `source` into `encoder` (nothing when None), print the report, record it in `work`.
    With `whole` (stage 3's DeepLabV3+), a file holding a whole segmentation model starts all
    of it (`models.pretrained.load_pretrained`).

    When `checkpoint` holds a saved epoch the run resumes from it: the weights come from the
    checkpoint, so the source is not read again (nor fetched: a timm name works offline then)
    and the record of the start is kept (`check_start` refuses one that started otherwise).
    """
    record = work / RECORD
    check_start(source, work, what, checkpoint)
    if (checkpoint / "state.json").is_file():
        if source is not None:
            print(
                f"pretrained {what}: resuming from {checkpoint}, started from {source}", flush=True
            )
        return
    if source is None:
        record.unlink(missing_ok=True)  # a stage started over from scratch in an old work folder
        return
    report = load_pretrained(encoder, source, whole=whole)
    print(report.summary(what), flush=True)
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(report.as_dict(), indent=1))


def check_start(source: str | None, work: Path, what: str, checkpoint: Path) -> None:
    """Refuse (ConfigError) to resume a checkpoint that started otherwise than `source` says
    (another source, random weights where `source` names one, or the reverse): resuming would
    ignore the option and leave model.json naming a start the weights did not have."""
    if not (checkpoint / "state.json").is_file():
        return
    started = pretrained_record(work)
    was = None if started is None else str(started["source"])
    if was != source:
        raise ConfigError(
            f"{checkpoint}: the {what} of this work folder started from "
            f"{was or 'random weights'} and would resume from there, but this run starts "
            f"it from {source or 'random weights'}; delete {work} to train it again, or "
            "give another --work-dir"
        )


def pretrained_record(work: Path) -> dict[str, Any] | None:
    """The report `warm_start` wrote in `work`, or None when the stage started from scratch."""
    f = Path(work) / RECORD
    return json.loads(f.read_text()) if f.is_file() else None
