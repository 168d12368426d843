"""The last batch's word on each of its slides, kept beside the report
(`OUT/.report/night.json`), so that a page rebuilt without a batch (`wsi-segment report`)
says what that night said: a slide the batch found up to date stays "up to date", a new
failure stays "failed" and a known one "known failure", instead of every finished slide
reading "done". The next batch replaces it: its night is then tonight, and the slides of
earlier nights are told from their folders and failure records (done; known failure since).

Each outcome carries when the batch recorded it (`BatchOutcome.at_utc`); one older than the
slide's own outputs or failure record (a run after the batch) is news no more and gives way
to them (`slide_entries`). A record that is missing, damaged or not ours is no record: the page is
then built from the folder alone, as before. Written at once (a temporary file renamed into
place) by every rebuild of a batch's report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from wsi_segment.pipeline.outputs.cohort import write_atomically
from wsi_segment.pipeline.outputs.report_thumbnails import THUMBS_DIR, thumbnails_folder
from wsi_segment.pipeline.outputs.slide_entries import BatchOutcome, Tonight

NIGHT_FILE = "night.json"
KIND = "wsi-segment batch outcomes"
FIELDS = ("status", "error", "slide", "error_class", "at_utc")


def utc_now() -> str:
    """The time an outcome is recorded, as summary.json's `created_utc` writes times."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_night(out_root: str | Path) -> Tonight:
    """The outcomes the batches recorded for OUT, by output name; empty when there is no
    record of ours (absent, a link, damaged, another kind)."""
    path = Path(out_root) / THUMBS_DIR / NIGHT_FILE
    if os.path.islink(path) or not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        slides = doc["slides"] if isinstance(doc, dict) and doc.get("kind") == KIND else {}
        return {
            str(name): BatchOutcome(**{k: str(seen.get(k) or "") for k in FIELDS})
            for name, seen in slides.items()
            if isinstance(seen, dict) and seen.get("status") and seen.get("at_utc")
        }
    except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError, TypeError):
        return {}


def write_night(out_root: str | Path, outcomes: Mapping[str, BatchOutcome]) -> None:
    """Record a batch's `outcomes` (so far), each stamped now, in place of the last batch's."""
    now = utc_now()
    slides = {
        n: {k: getattr(o, k) for k in FIELDS[:4]} | {"at_utc": now}
        for n, o in sorted(outcomes.items())
    }
    doc = {"kind": KIND, "schema_version": 1, "slides": slides}
    folder = thumbnails_folder(Path(out_root))
    write_atomically(folder / NIGHT_FILE, json.dumps(doc, indent=1, sort_keys=True) + "\n")
