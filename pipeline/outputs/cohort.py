"""`OUT/cohort.csv`: the study's spreadsheet, one row per slide (per region of a `--roi` run).

Columns (docs/outputs.md) are the fixed `LEADING` ones, then two per class (`<class>_area_um2`,
`<class>_fraction_of_tissue`) for every class any slide reports, in the order they first
appear (each model's class order, `Unclassified` last), then `TRAILING`. Numbers are
written as Python writes floats (`repr`: the shortest text that reads back to the same
double), so a row holds exactly what summary.json holds. Rows are sorted by output name,
regions in the order of the summary: the same folder gives the same bytes.

The file is replaced at once (a temporary file renamed into place), so a reader, or a batch
stopped half way, never sees half a table; and only a file of ours is replaced: one whose
first line starts with our header.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from wsi_segment.errors import OutputError
from wsi_segment.models.labels import UNCLASSIFIED_NAME
from wsi_segment.pipeline.outputs.shared_access import follow_folder
from wsi_segment.pipeline.outputs.slide_entry import ClassArea, SlideEntry

COHORT_NAME = "cohort.csv"
LEADING = (
    "slide",
    "region",
    "region_id",
    "status",
    "reason",
    "slide_path",
    "model",
    "model_sha256",
    "mpp_x",
    "mpp_y",
    "region_area_um2",
    "tissue_area_um2",
    "region_class",
)
TRAILING = ("tissue_status", "qc_flags", "run_utc", "failed_utc", "summary_schema")
OURS_PREFIX = ",".join(LEADING[:5])  # how a cohort.csv of ours begins, whatever its classes

Cell = str | float | int | None


def class_columns(entries: Iterable[SlideEntry]) -> list[str]:
    """Every class any entry reports, in first-seen order, `Unclassified` last."""
    names: dict[str, None] = {}
    for entry in entries:
        for c in entry.classes:
            names.setdefault(c.name, None)
        for region in entry.regions:
            for c in region.classes:
                names.setdefault(c.name, None)
    ordered = [n for n in names if n != UNCLASSIFIED_NAME]
    return ordered + ([UNCLASSIFIED_NAME] if UNCLASSIFIED_NAME in names else [])


# what makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def header(classes: Sequence[str]) -> list[str]:
    per_class = [f"{c}_{what}" for c in classes for what in ("area_um2", "fraction_of_tissue")]
    return [*LEADING, *per_class, *TRAILING]


def cohort_rows(entries: Sequence[SlideEntry]) -> list[list[Cell]]:
    """The table: a header row, then one row per slide, or per region of a `--roi` run."""
    classes = class_columns(entries)
    rows: list[list[Cell]] = [list(header(classes))]
    for entry in entries:
        common: list[Cell] = [entry.status, entry.reason, entry.slide_path]
        common += [entry.model, entry.model_sha256]
        common += list(entry.mpp) if entry.mpp else [None, None]
        when: list[Cell] = [entry.created_utc, entry.failed_utc, entry.schema_version]
        if not entry.regions:
            cells = _class_cells(entry.classes, classes)
            areas: list[Cell] = [None, entry.tissue_area_um2, None]
            flags = "; ".join(entry.qc_flags)
            rows.append(
                [entry.name, None, None, *common, *areas, *cells, entry.tissue_status, flags, *when]
            )
        for region in entry.regions:
            cells = _class_cells(region.classes, classes)
            name = [entry.name, region.name, region.qupath_id]
            areas = [region.area_um2, region.tissue_area_um2, region.qupath_class]
            flags = "; ".join((*entry.qc_flags, *region.qc_flags))
            rows.append([*name, *common, *areas, *cells, entry.tissue_status, flags, *when])
    return rows


def _class_cells(areas: Sequence[ClassArea], classes: Sequence[str]) -> list[Cell]:
    by_name = {c.name: c for c in areas}
    cells: list[Cell] = []
    for name in classes:
        c = by_name.get(name)
        cells += [c.area_um2, c.fraction] if c is not None else [None, None]
    return cells


def cohort_text(entries: Sequence[SlideEntry]) -> str:
    """cohort.csv's text: RFC 4180 quoting where needed, '\\n' line ends, empty cells for
    values a slide does not have, and text a spreadsheet would run as a formula kept text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in cohort_rows(entries):
        writer.writerow([_cell_text(v) for v in row])
    return buffer.getvalue()


def _cell_text(value: Cell) -> str | int:
    """A cell as written. Text that starts as a formula does in Excel or LibreOffice (`=`,
    `+`, `-`, `@`, a tab or a carriage return: a slide file or a QuPath region anyone may
    name `=HYPERLINK(...)`) gets a leading `'`, so the spreadsheet shows it, never runs it."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_cohort(out_root: str | Path, entries: Sequence[SlideEntry]) -> Path:
    """Write `out_root/cohort.csv` at once; OutputError when the file there is not ours."""
    path = Path(out_root) / COHORT_NAME
    refuse_foreign_file(path, OURS_PREFIX, "a cohort table")
    write_atomically(path, cohort_text(entries))
    return path


def refuse_foreign_file(path: Path, prefix: str, what: str) -> None:
    """OutputError unless `path` is absent or a regular file of ours (it begins `prefix`)."""
    if not os.path.lexists(path):
        return
    why = ""
    if os.path.islink(path) or not path.is_file():
        why = "it is a symbolic link or not a file"
    else:
        try:
            with open(path, encoding="utf-8") as f:
                start = f.read(len(prefix))
        except (OSError, UnicodeDecodeError) as exc:
            start, why = "", f"it cannot be read ({exc})"
        if not why and start != prefix:
            why = f"it is not {what} wsi-segment wrote"
    if why:
        raise OutputError(
            f"{path} is in the way ({why}); it is left as it is: move it away and rebuild "
            "the report with `wsi-segment report`"
        )


def write_atomically(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file beside it, renamed into place, so a
    reader sees the old file or the new one, never a part; readable like the folder."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc}); check the folder's rights") from exc
    try:
        follow_folder(fd, path.parent)  # mkstemp makes it 0600: the lab's users read it too
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot be written ({exc}); check the folder's space and rights"
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
