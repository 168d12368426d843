"""What an output folder holds, slide by slide: the morning-after view of `OUT`.

`scan_slides(OUT)` reads what runs already wrote (each finished folder's `summary.json`,
the failure records `.<name>.failed.json`, the hidden `.<name>.partial` folders of runs
in progress or stopped) into one `SlideEntry` per slide, for every slide under `OUT`, not
only tonight's. Only the numbers the cohort table and the report show are kept, so memory
does not grow with the size of the summaries. Whatever is wrong with a folder (a damaged
or foreign summary.json, an older schema, a run still writing it) becomes an entry that
says so: the table and the page report it, and nothing here raises for a bad folder.

A batch may hand over what it saw tonight (`tonight`: output name -> its status), which
tells a finished slide found up to date from one it made, a known failure from a new one,
and names the slides that failed without leaving a record (errors that may not recur).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_segment.errors import OutputBusy
from wsi_segment.pipeline.output_files import (
    GEOJSON_NAME,
    OVERLAY_NAME,
    STORE_NAME,
    SUMMARY_NAME,
    THUMBNAIL_NAME,
)
from wsi_segment.pipeline.outputs.failure_record import RECORD_SUFFIX, read_record
from wsi_segment.pipeline.outputs.output_classes import output_classes
from wsi_segment.pipeline.outputs.ownership import unreadable_summary
from wsi_segment.pipeline.outputs.report_runs import run_settings
from wsi_segment.pipeline.outputs.run_in_progress import (
    PARTIAL_SUFFIX,
    being_written,
    partial_reason,
)
from wsi_segment.pipeline.outputs.slide_entry import ClassArea, Region, SlideEntry
from wsi_segment.pipeline.outputs.slide_status import (
    BATCH_STATUS,
    DAMAGED,
    DONE,
    FAILED,
    FOREIGN,
    IN_PROGRESS,
    KNOWN,
    NEWER,
    OLDER,
    QUEUED,
    STOPPED,
    UNREADABLE,
    UP_TO_DATE,
)
from wsi_segment.pipeline.outputs.summary import SCHEMA_VERSION
from wsi_segment.wsi.shown_path import shown_slide_path

FALLBACK_COLOR = (160, 160, 160)  # a class whose colour the folder does not say
# a damaged folder's fix: wsi-segment's own folder is replaced by a rerun; one it did not
# write (a person's folder of that name) is refused by the rerun, and must be moved
RERUN = (
    "rerun the slide with --overwrite if wsi-segment wrote this folder, or move the folder "
    "out of OUT if it did not"
)


class _Unusable(ValueError):
    """summary.json lacks or garbles a key the report reads. Control flow of this module
    alone (raised by its readers of a summary, caught in `_folder_entry`, which makes the
    folder's entry say "damaged"), so it stays here, out of `wsi_segment.errors`."""


@dataclass(frozen=True)
class BatchOutcome:
    """What tonight's batch says of a slide (`pipeline.segment.SlideResult`'s status,
    error and slide path)."""

    status: str
    error: str = ""
    slide: str = ""
    error_class: str = ""  # a failure's `wsi_segment.errors` class name
    at_utc: str = ""  # when an earlier batch recorded it (`night_record`); "": this batch


Tonight = Mapping[str, BatchOutcome]  # output name -> what the batch saw
NOTHING_TONIGHT = BatchOutcome("")


def scan_slides(out_root: str | Path, tonight: Tonight) -> list[SlideEntry]:
    """One entry per slide under `out_root`, sorted by name. `tonight`: a batch's results
    by output name (`pipeline.segment.SlideResult`'s status and error), or empty for the
    folder alone (`wsi-segment report`)."""
    root = Path(out_root)
    names: set[str] = set()
    folders: set[str] = set()
    with os.scandir(root) as listing:
        found = list(listing)
    for entry in found:
        name = entry.name
        if not name.startswith("."):
            if entry.is_dir(follow_symlinks=False) and _looks_like_output(Path(entry.path)):
                folders.add(name)
                names.add(name)
        elif name.endswith(RECORD_SUFFIX) or name.endswith(PARTIAL_SUFFIX):
            suffix = RECORD_SUFFIX if name.endswith(RECORD_SUFFIX) else PARTIAL_SUFFIX
            names.add(name[1 : -len(suffix)])
    listed = ("failed", "known-failure", QUEUED)  # tonight's, whether or not OUT shows them
    names |= {n for n, seen in tonight.items() if seen.status in listed}
    return [
        _entry(root, n, n in folders, tonight.get(n, NOTHING_TONIGHT)) for n in sorted(names) if n
    ]


def _looks_like_output(path: Path) -> bool:
    """A folder a run wrote (or one that looks like it): it has a summary.json or one of
    the outputs, or one this user may not list or enter (an output another member left
    private: its entry says so, it is not left out). Other folders under OUT (the slides
    themselves, a person's notes) are not slides of the report."""
    if not os.access(path, os.R_OK | os.X_OK):
        return True
    return any(
        os.path.lexists(path / n) for n in (SUMMARY_NAME, STORE_NAME, OVERLAY_NAME, GEOJSON_NAME)
    )


def _entry(root: Path, name: str, is_folder: bool, tonight: BatchOutcome) -> SlideEntry:
    """The entry of `name`: its finished folder's numbers, overlaid with what else is
    known of it (a failure record, a run writing it now, tonight's status)."""
    if tonight.error_class == OutputBusy.__name__:  # another run was writing it: its folder
        tonight = NOTHING_TONIGHT  # (finished, or in progress) is the slide's news, not this
    entry = _folder_entry(root / name, name) if is_folder else SlideEntry(name, STOPPED)
    record = read_record(root, name)
    if _older_news(tonight, entry, record):  # a run after the recorded batch: its news
        tonight = NOTHING_TONIGHT
    status_tonight, error_tonight = tonight.status, tonight.error
    if record is not None and _outlived(record, entry, status_tonight):
        record = None
    if record is not None or status_tonight in ("failed", "known-failure"):
        # a record the batch did not meet tonight (`wsi-segment report`, or a batch of other
        # slides into this OUT) is a known failure since its date, as the night that met it said
        unmet = record is not None and not status_tonight
        status = KNOWN if unmet else BATCH_STATUS.get(status_tonight, FAILED)
        message = record["message"] if record is not None else error_tonight
        reason = _one_line(message or "failed")
        if record is not None and status == KNOWN:
            reason = f"failing since {record['since_utc'][:10]}: {reason}"
        if is_folder:
            reason += " (the outputs shown are an earlier run's)"
        path = entry.slide_path or _record_slide(record) or tonight.slide
        failed = str(record["failed_utc"]) if record is not None else ""
        return dataclasses.replace(
            entry, status=status, reason=reason, slide_path=path, failed_utc=failed
        )
    writing = being_written(root, name)
    if status_tonight == QUEUED:  # a batch in flight: its slides not yet ended
        status, why = (IN_PROGRESS, "running now") if writing else (QUEUED, "not yet run")
        if is_folder:
            why += " (the outputs shown are an earlier run's)"
        path = entry.slide_path or shown_slide_path(tonight.slide)
        return dataclasses.replace(entry, status=status, reason=why, slide_path=path)
    if writing is not None and not is_folder:
        status = IN_PROGRESS if writing else STOPPED
        return dataclasses.replace(entry, status=status, reason=partial_reason(writing))
    if entry.status == DONE and status_tonight == "up-to-date":
        return dataclasses.replace(entry, status=UP_TO_DATE)
    return entry


def _older_news(tonight: BatchOutcome, entry: SlideEntry, record: Mapping[str, Any] | None) -> bool:
    """Whether a recorded batch's outcome (`night_record`) is older than what the folder
    holds now: outputs made, or a failure recorded, after it."""
    if not tonight.at_utc:
        return False
    at = tonight.at_utc[:19]
    failed = str((record or {}).get("failed_utc", ""))[:19]
    return entry.created_utc[:19] > at or failed > at


def _outlived(record: Mapping[str, Any], entry: SlideEntry, status_tonight: str) -> bool:
    """Whether a failure record is older news: the slide finished tonight (the batch
    removes the record at its end), or its outputs were made after the failure (a run
    outside a batch, which keeps no records)."""
    if status_tonight in ("done", "up-to-date"):
        return True
    finished, failed = entry.created_utc[:19], str(record.get("failed_utc", ""))[:19]
    return bool(finished) and finished > failed


def _record_slide(record: Mapping[str, Any] | None) -> str:
    slide = (record or {}).get("slide")
    return str(slide.get("path", "")) if isinstance(slide, dict) else ""


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _folder_entry(folder: Path, name: str) -> SlideEntry:
    """A finished folder's entry from its summary.json, or one saying why it has none."""
    unreadable = unreadable_summary(folder)  # the folder's, then the file's
    if unreadable is not None:
        why = f"{unreadable}; ask its owner to let the lab read it (chmod -R g+rX)"
        return SlideEntry(name, UNREADABLE, why)
    path = folder / SUMMARY_NAME
    if os.path.islink(path) or not path.is_file():
        why = f"{path} is missing: the folder is not a finished run"
        return _damaged(folder, name, why)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as exc:
        return _damaged(folder, name, f"{path} is not readable JSON ({exc}); {RERUN}")
    version = summary.get("schema_version") if isinstance(summary, dict) else None
    if not isinstance(version, int) or not isinstance(summary.get("slide"), dict):
        return SlideEntry(name, FOREIGN, f"{path} is not a summary wsi-segment wrote")
    if version > SCHEMA_VERSION:
        why = f"{path} has schema {version}, newer than this version's {SCHEMA_VERSION}"
        return SlideEntry(name, NEWER, f"{why}; build the report with the newer wsi-segment")
    try:
        entry = _summary_entry(summary, name, folder)
    except (_Unusable, KeyError, TypeError, ValueError) as exc:
        return _damaged(folder, name, f"{path} is damaged ({exc}); {RERUN}")
    if version < SCHEMA_VERSION:
        why = f"summary.json has schema {version}, older than this version's {SCHEMA_VERSION}"
        more = "; Unclassified was not reported then" if version < 2 else ""
        if version < 4:
            more += "; an undefined share or mean (no tissue, no pixels) read 0 then"
        return dataclasses.replace(
            entry, status=OLDER, reason=f"{why}{more}; rerun with --overwrite"
        )
    return entry


def _damaged(folder: Path, name: str, why: str) -> SlideEntry:
    """A folder whose summary is missing or damaged: its overlay, where one is there, is
    still its picture on the page (the numbers are what cannot be trusted)."""
    overlay = folder / OVERLAY_NAME
    shown = not os.path.islink(overlay) and overlay.is_file()
    return SlideEntry(name, DAMAGED, why, has_overlay=shown)


def _summary_entry(summary: Mapping[str, Any], name: str, folder: Path) -> SlideEntry:
    """The numbers of a summary of ours (raises `_Unusable` naming a garbled key)."""
    slide, model, tissue = summary["slide"], _dict(summary, "model"), _dict(summary, "tissue")
    mpp = _dict(slide, "mpp")
    classes = _class_areas(_dict(summary, "classes"))
    regions = tuple(_region(r) for r in summary.get("rois") or ())
    return SlideEntry(
        name,
        DONE,
        slide_path=shown_slide_path(str(slide.get("path", ""))),  # an older version kept a query
        model=str(model.get("name", "")),
        model_sha256=str(model.get("sha256", "")),
        mpp=(_number(mpp, "x"), _number(mpp, "y")),
        tissue_area_um2=_number(tissue, "area_um2"),
        tissue_status=str(tissue.get("status") or ""),
        classes=classes,
        regions=regions,
        colors=_class_colors(folder, [c.name for c in classes]),
        titles=_titles(model.get("class_titles")),
        created_utc=str(summary.get("created_utc") or ""),
        settings=run_settings(summary.get("parameters")),
        schema_version=int(summary["schema_version"]),
        has_overlay=(folder / OVERLAY_NAME).is_file(),
        has_thumbnail=_wrote_thumbnail(summary, folder),
    )


def _wrote_thumbnail(summary: Mapping[str, Any], folder: Path) -> bool:
    """Whether the run wrote overlay-thumbnail.jpg: its summary lists the file (an older
    version's does not, and a file of that name there is not ours) and it is a plain file."""
    output = summary.get("output")
    files = output.get("files") if isinstance(output, dict) else None
    thumbnail = folder / THUMBNAIL_NAME
    listed = isinstance(files, list) and THUMBNAIL_NAME in files
    return listed and not os.path.islink(thumbnail) and thumbnail.is_file()


def _dict(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    if not isinstance(value, dict):
        raise _Unusable(f"'{key}' is not an object")
    return value


def _number(mapping: Mapping[str, Any], key: str) -> float:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Unusable(f"'{key}' is not a number")
    return float(value)


def _undefined_or_number(mapping: Mapping[str, Any], key: str) -> float | None:
    """A number that may be undefined (null: `summary.ratio`); a missing key is damage."""
    if key in mapping and mapping[key] is None:
        return None
    return _number(mapping, key)


def _class_areas(classes: Mapping[str, Any]) -> tuple[ClassArea, ...]:
    out = []
    for name, values in classes.items():
        if not isinstance(values, dict):
            raise _Unusable(f"class '{name}' is not an object")
        fraction = _undefined_or_number(values, "fraction_of_tissue")
        out.append(ClassArea(str(name), _number(values, "area_um2"), fraction))
    return tuple(out)


def _region(region: Any) -> Region:
    if not isinstance(region, dict):
        raise _Unusable("a region of 'rois' is not an object")
    missing = region.get("missing") is True  # a missing TMA core: listed, not segmented
    return Region(
        str(region.get("name", "")),
        str(region.get("qupath_id", "")),
        _number(region, "area_um2"),
        None if missing else _number(region, "tissue_area_um2"),
        () if missing else _class_areas(_dict(region, "classes")),
        str(region.get("classification") or ""),
    )


def _titles(value: Any) -> dict[str, str]:
    """The model's class titles as summary.json recorded them (none: an older summary, or
    a model without them)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def _class_colors(folder: Path, names: list[str]) -> dict[str, tuple[int, int, int]]:
    """The classes' colours as the run wrote them into the probability store's attributes
    (the model's colours; `Unclassified` its own), a neutral grey where it says none."""
    known: dict[str, tuple[int, int, int]] = {}
    try:
        attrs = json.loads((folder / STORE_NAME / "0" / ".zattrs").read_text(encoding="utf-8"))
        ours = attrs["wsi_segment"]
        pairs = zip(*output_classes(ours["class_names"], ours["colors"]), strict=True)
        known = {str(n): (int(c[0]), int(c[1]), int(c[2])) for n, c in pairs}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    return {n: known.get(n, FALLBACK_COLOR) for n in names}
