"""Turn a batch input (folder, glob or manifest CSV) into a checked list of slides.

Everything that can be wrong with a batch's input is found here, before any slide runs:
a missing column, a column we do not know (a typo of `roi` would otherwise run whole
slides), a missing file or regions file, an unparsable mpp, a slide path with a control
character (a newline would split every line that names it), an output name that would
write outside the output folder (`../x`, `/abs`, `a/b`), or two slides that would write
to the same output folder. Finding these late would overwrite results or waste a night's run.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_segment.errors import ConfigError, DatasetError
from wsi_segment.pipeline.outputs.naming import DICOM_SUFFIX
from wsi_segment.pipeline.outputs.output_name import (
    check_distinct_names,
    check_output_name,
    default_output_name,
    refuse_control_characters,
)
from wsi_segment.pipeline.params import SegmentParams

# File suffixes taken as slides when the input is a folder (lower case, compared case-free).
SLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".czi",
)
PATH_COLUMNS: tuple[str, ...] = ("slide", "slide_path", "path")
MPP_COLUMNS: tuple[str, ...] = ("mpp",)
NAME_COLUMNS: tuple[str, ...] = ("name", "output_name", "output")
# A QuPath GeoJSON of the slide's regions (TMA cores, annotations): as `--roi` for that slide
ROI_COLUMNS: tuple[str, ...] = ("roi",)
MANIFEST_COLUMNS = (*PATH_COLUMNS, *MPP_COLUMNS, *NAME_COLUMNS, *ROI_COLUMNS)
_GLOB_CHARS = re.compile(r"[*?\[]")


# Text files that look like a manifest under another name: refused, not opened as a slide.
_NOT_CSV_MANIFESTS = (".txt", ".tsv", ".list", ".lst")


@dataclass(frozen=True)
class BatchItem:
    """One slide of a batch: where it is, an optional mpp override, its output folder name,
    and its own regions file (a manifest's `roi` column)."""

    slide: str  # a local path, or a URL (file://, s3://, ...) as written
    mpp: float | None
    name: str
    roi: str | None = None  # the regions file, as read (relative to the manifest's folder)


def _parse_mpp(value: str, source: str) -> float | None:
    text = value.strip()
    if not text:
        return None
    try:
        mpp = float(text)
    except ValueError:
        raise ConfigError(
            f"{source}: mpp {value!r} is not a number (um per pixel, e.g. 0.25)"
        ) from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise ConfigError(f"{source}: mpp {value!r} must be a positive number of um per pixel")
    return mpp


def _pick_column(fieldnames: list[str], choices: tuple[str, ...]) -> str | None:
    lowered = {f.strip().lower(): f for f in fieldnames}
    for choice in choices:
        if choice in lowered:
            return lowered[choice]
    return None


def read_manifest(csv_path: Path) -> list[BatchItem]:
    """Read a manifest CSV: a slide path column, optional mpp and output name columns.

    Relative slide paths are taken relative to the CSV's folder, so a manifest travels
    with its slides; a URL (`s3://...`, `file://...`) is kept as written.
    """
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fieldnames = list(reader.fieldnames or [])
            path_col = _pick_column(fieldnames, PATH_COLUMNS)
            if path_col is None:
                raise DatasetError(
                    f"{csv_path}: manifest has no slide column (found {fieldnames or 'no header'}); "
                    f"add a header row with one of {', '.join(PATH_COLUMNS)} "
                    "and optionally mpp and name"
                )
            _refuse_unknown_columns(fieldnames, f"{csv_path}:1")
            mpp_col = _pick_column(fieldnames, MPP_COLUMNS)
            name_col = _pick_column(fieldnames, NAME_COLUMNS)
            roi_col = _pick_column(fieldnames, ROI_COLUMNS)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read the manifest CSV ({exc})") from exc

    items: list[BatchItem] = []
    for line_no, row in enumerate(rows, start=2):
        source = f"{csv_path}:{line_no}"
        raw_path = (row.get(path_col) or "").strip()
        if not raw_path:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            raise DatasetError(f"{source}: the {path_col} column is empty; give the slide's path")
        slide = (
            raw_path if "://" in raw_path else str(csv_path.parent / Path(raw_path).expanduser())
        )
        mpp = _parse_mpp(row.get(mpp_col) or "", source) if mpp_col else None
        raw_name = (row.get(name_col) or "").strip() if name_col else ""
        name = check_output_name(raw_name, source) if raw_name else default_output_name(slide)
        roi = _regions_file(row.get(roi_col) or "", csv_path, source) if roi_col else None
        items.append(BatchItem(slide=slide, mpp=mpp, name=name, roi=roi))
    return items


def _refuse_unknown_columns(fieldnames: list[str], source: str) -> None:
    """A header naming a column we do not read (a typo, `ROI file`, `regions`): refused, not
    silently ignored: an ignored regions column ran whole slides."""
    unknown = [f for f in fieldnames if (f or "").strip().lower() not in MANIFEST_COLUMNS]
    if unknown:
        raise DatasetError(
            f"{source}: unknown manifest column(s) {', '.join(map(repr, unknown))}; the columns "
            f"are {', '.join(MANIFEST_COLUMNS)} (a slide's path, then optionally its mpp, its "
            "output name and its regions file): rename or remove them"
        )


def _regions_file(value: str, csv_path: Path, source: str) -> str | None:
    """A row's regions file, relative to the manifest's folder, read once now: a missing or
    bad one is refused before any slide runs, naming the row (None: the whole slide)."""
    from wsi_segment.errors import RoiError
    from wsi_segment.wsi.roi_file import read_roi_file

    text = value.strip()
    if not text:
        return None
    path = csv_path.parent / Path(text).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"{source}: regions file {path} not found; fix the row's roi (a QuPath GeoJSON "
            "export, its path relative to the manifest's folder) or empty it for the whole slide"
        )
    try:
        read_roi_file(path)
    except RoiError as exc:
        raise RoiError(f"{source}: {exc}") from None
    return str(path)


def check_regions(items: list[BatchItem], params: SegmentParams) -> None:
    """Refuse regions given twice: `--roi` (every slide) and a manifest's `roi` column."""
    if params.roi is not None and any(item.roi for item in items):
        raise ConfigError(
            f"regions given twice: --roi {params.roi} for every slide and the manifest's roi "
            "column; give each slide's regions in the manifest, or one --roi without the column"
        )


def _refuse_missing(items: list[BatchItem], source: str) -> None:
    """A manifest's local slides that are not there, all named in one error: a listed slide
    that is missing is a mistake in the list (a folder's or glob's entries were found there;
    a broken link among them fails as its own slide, saying so)."""
    missing = [item.slide for item in items if _missing(item.slide)]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise DatasetError(f"{source}: {len(missing)} slide(s) not found: {shown}")


def _missing(slide: str) -> bool:
    """A local path naming nothing, or a folder that is not a DICOM slide (a URL's open
    decides; os.path, not Path: Path raises for a folder this user may not search)."""
    if "://" in slide:
        return False
    return not os.path.exists(slide) or (os.path.isdir(slide) and not holds_dicom(Path(slide)))


def _is_slide_file(path: Path) -> bool:
    """A visible entry with a slide suffix that is not a folder. A named pipe, device or
    socket is kept, so its slide fails with its own error (`wsi.slide` refuses anything but
    a regular file) instead of being skipped without a word."""
    lower = path.name.lower()
    return not path.is_dir() and not lower.startswith(".") and lower.endswith(SLIDE_SUFFIXES)


def holds_dicom(folder: Path) -> bool:
    """Whether `folder` is a DICOM slide: a visible folder holding `.dcm` files (openslide
    opens the slide by one of them; `wsi.slide_folder`)."""
    if folder.name.startswith(".") or not folder.is_dir():
        return False
    try:
        return any(f.name.lower().endswith(DICOM_SUFFIX) for f in folder.iterdir())
    except OSError:
        return False


def _no_slides(folder: Path) -> DatasetError:
    """What to pass instead of a folder holding no slide: a DICOM slide folder is one slide."""
    if holds_dicom(folder):
        return DatasetError(
            f"{folder}: holds the .dcm files of one DICOM slide, not slides to batch; segment "
            f"it with `wsi-segment {folder}`, give `batch` the folder holding DICOM slide "
            "folders (one folder of .dcm files per slide), or list it in a manifest .csv"
        )
    return DatasetError(
        f"{folder}: no slide files in this folder (looked for {', '.join(SLIDE_SUFFIXES)}, "
        "and folders of .dcm files: DICOM slides); give a folder of slides or a manifest .csv"
    )


def parse_batch_input(spec: str | Path, out_root: str | Path) -> list[BatchItem]:
    """Expand a folder, glob, manifest CSV or single slide into checked batch items. A
    folder's slides are its slide files and its DICOM slide folders (`holds_dicom`); a
    glob's, its matches outside `out_root` (the batch's output folder: its own
    probabilities.ome.tif files are not slides).

    Raises `DatasetError` for inputs that name nothing or missing slides, and
    `ConfigError` for bad output names or two slides sharing an output folder.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        slides = sorted(p for p in path.iterdir() if _is_slide_file(p) or holds_dicom(p))
        if not slides:
            raise _no_slides(path)
        items = [BatchItem(str(p), None, default_output_name(p)) for p in slides]
    elif path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DatasetError(f"{path}: manifest CSV not found")
        items = read_manifest(path)
        if not items:
            raise DatasetError(f"{path}: the manifest lists no slides")
        return check_items(items, source=text, listed=True)
    elif _GLOB_CHARS.search(text):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        outputs = Path(os.path.realpath(out_root))  # realpath: a link loop raises nothing
        slides = [  # a pipe or a broken link too: its slide says why
            p
            for p in matches
            if not p.is_dir() and not Path(os.path.realpath(p)).is_relative_to(outputs)
        ]
        if not slides:
            raise DatasetError(f"{text}: the pattern matches no files (outside {out_root})")
        items = [BatchItem(str(p), None, default_output_name(p)) for p in slides]
    elif path.suffix.lower() in _NOT_CSV_MANIFESTS and path.is_file():
        raise DatasetError(
            f"{path}: a list of slides must be a manifest .csv (a header row with a slide "
            "column, then one slide per row); save it as .csv, or give a folder or a glob"
        )
    elif path.is_file():
        items = [BatchItem(str(path), None, default_output_name(path))]
    else:
        raise DatasetError(
            f"{text}: not found; give a folder of slides, a glob such as 'slides/*.svs', "
            "or a manifest .csv"
        )
    return check_items(items, source=text)


def check_items(items: list[BatchItem], source: str, listed: bool = False) -> list[BatchItem]:
    """Refuse control characters in slide paths (the first, named on one line), then, for
    `listed` slides (a manifest's), those not there, then output-name collisions, all
    reported at once."""
    for item in items:
        refuse_control_characters(item.slide)
    if listed:
        _refuse_missing(items, source)
    for item in items:
        check_output_name(item.name, source)
    check_distinct_names(
        [(item.slide, item.name) for item in items],
        f"{source}: ",
        "give one of them another name (manifest 'name' column)",
    )
    return items


def params_for(item: BatchItem, params: SegmentParams) -> SegmentParams:
    """The `SegmentParams` of one batch slide: its mpp override, output name and regions
    file applied.

    The output name is only set when it differs from the default, so a batch slide and a
    plain `segment_slide` call of the same slide record the same parameters.
    """
    if params.output_name:
        raise ConfigError(
            "an output name applies to one slide; in a batch, name slides in the manifest's "
            "'name' column instead"
        )
    changes: dict[str, Any] = {}
    if item.mpp is not None:
        changes["mpp"] = item.mpp
    if item.name != default_output_name(item.slide):
        changes["output_name"] = item.name
    if item.roi is not None:
        changes["roi"] = Path(item.roi)
    return dataclasses.replace(params, **changes) if changes else params
