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

from wsi_segment.models.pretrained import load_pretrained

RECORD = "pretrained.json"


def warm_start(
    encoder: nn.Module, source: str | None, work: Path, what: str, checkpoint: Path
) -> None:
    """Load `source` into `encoder` (nothing when None), print the report, record it in `work`.

    When `checkpoint` holds a saved epoch the run resumes from it: the weights come from the
    checkpoint, so the source is not read again (nor fetched: a timm name works offline then)
    and the record of the start is kept.
    """
    record = work / RECORD
    if source is None:
        record.unlink(missing_ok=True)  # a rerun from scratch in an old work folder
        return
    if (checkpoint / "state.json").is_file() and record.is_file():
        print(f"pretrained {what}: resuming from {checkpoint}, started from {source}", flush=True)
        return
    report = load_pretrained(encoder, source)
    print(report.summary(what), flush=True)
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(report.as_dict(), indent=1))


def pretrained_record(work: Path) -> dict[str, Any] | None:
    """The report `warm_start` wrote in `work`, or None when the stage started from scratch."""
    f = Path(work) / RECORD
    return json.loads(f.read_text()) if f.is_file() else None
