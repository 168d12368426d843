"""Tables of slide results: one row per slide for a batch, one row per class for a slide.

Used by the Prefect artifacts and the `wsi-segment batch` report alike, so the table a
scheduler shows and the one a terminal prints are the same numbers. In the units of every
view a person reads (these tables, report.html): areas in mm² (4 decimals), shares of
tissue in % (1 decimal); the files programs read (summary.json, cohort.csv) keep um² and
fractions 0-1, exactly as measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the report is read without importing the inference stack
    from wsi_segment.pipeline.segment import SlideResult

STATUSES = ("done", "up-to-date", "failed")


def class_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-class area (mm²), share of tissue (%) and mean probability from a summary; an
    undefined value (null: a share of no tissue, the mean of a class with no pixels,
    `Unclassified`'s probability) stays an empty cell, never 0."""
    rows = []
    for name, values in (summary.get("classes") or {}).items():
        rows.append(
            {
                "class": name,
                "area_mm2": mm2(values.get("area_um2", 0.0)),
                "percent_of_tissue": percent(values.get("fraction_of_tissue")),
                "mean_probability": _rounded(values.get("mean_probability"), 4),
            }
        )
    return rows


def mm2(area_um2: float | None) -> float | None:
    """An area (um²) in the tables' unit: mm², 4 decimals (100 um², a few cells)."""
    return None if area_um2 is None else round(float(area_um2) / 1e6, 4)


def percent(fraction: float | None) -> float | None:
    """A share (0-1) in the tables' unit: %, 1 decimal, as report.html shows it."""
    return None if fraction is None else round(100 * float(fraction), 1)


def _rounded(value: float | None, digits: int) -> float | None:
    """`value` rounded for a table; None (undefined, or not in the summary) stays None."""
    return None if value is None else round(float(value), digits)


def result_row(result: SlideResult, class_names: Sequence[str] = ()) -> dict[str, Any]:
    """One batch table row from a `SlideResult`: status, tissue area (mm²), each class's
    share of tissue (%), error."""
    summary = result.summary or {}
    tissue = (summary.get("tissue") or {}).get("area_um2")
    row: dict[str, Any] = {
        "slide": str(result.slide),
        "status": status_cell(result),
        "output": str(result.out_dir) if result.out_dir else "",
        "tissue_area_mm2": mm2(tissue),
        "tissue": tissue_mark(summary),
    }
    classes = summary.get("classes") or {}
    for name in class_names:
        row[f"{name} %"] = percent((classes.get(name) or {}).get("fraction_of_tissue"))
    row["seconds"] = seconds_cell(float(result.seconds or 0.0))
    row["error"] = result.error or ""
    return row


def since_text(since_utc: str) -> str:
    """A record's `2026-11-23T02:00:41Z` as `2026-11-23 02:00 UTC` for tables and logs."""
    return f"{since_utc[:10]} {since_utc[11:16]} UTC" if len(since_utc) >= 16 else since_utc


def status_cell(result: SlideResult) -> str:
    """The status a reader sees: a failure says whether it is new, failing again (retried
    on request) or known and not retried (`pipeline.known_failures`)."""
    if result.status == "known-failure":
        return f"failed (known, since {since_text(result.known_since or '')})"
    if result.status == "failed":
        if result.known_since:
            return f"failed (again, since {since_text(result.known_since)})"
        return "failed (new)"
    return result.status


def known_failure_message(result: SlideResult) -> str:
    """A known failure's line for a log or the terminal: the slide, since when, its error
    and how to retry it (a changed slide, model or parameters are retried without asking)."""
    return (
        f"{status_cell(result)}, not retried: {failure_message(result)}; to retry it "
        "unchanged, rerun with --retry-failed (flow parameter retry_failed)"
    )


def seconds_cell(seconds: float) -> float:
    """Seconds for the table: tenths, or milliseconds under a second, so a slide that
    failed at once shows the time it took rather than 0.0."""
    return round(seconds, 1) if seconds >= 1 else round(seconds, 3)


def tissue_mark(summary: Mapping[str, Any]) -> str:
    """The tissue status of a slide, flagged when it needs a look ("none !")."""
    tissue = summary.get("tissue") or {}
    status = str(tissue.get("status") or "")
    return f"{status} !" if tissue.get("warning") else status


def batch_rows(results: Iterable[SlideResult]) -> list[dict[str, Any]]:
    """Rows for every result, with one fraction column per class seen in any summary."""
    results = list(results)
    names: list[str] = []
    for result in results:
        for name in (result.summary or {}).get("classes") or {}:
            if name not in names:
                names.append(name)
    return [result_row(r, names) for r in results]


def failure_message(result: SlideResult) -> str:
    """A failed slide's error for a log line, naming the slide once (errors name their file)."""
    error = result.error or "failed"
    return error if str(result.slide) in error else f"{result.slide}: {error}"


def counts(results: Iterable[SlideResult]) -> dict[str, int]:
    """How many slides ended in each status."""
    out = dict.fromkeys(STATUSES, 0)
    for result in results:
        out[result.status] = out.get(result.status, 0) + 1
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-style markdown table (Prefect renders it; terminals show it readably)."""
    if not rows:
        return "_no rows_"
    columns = list(rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["" if row.get(c) is None else str(row.get(c)) for c in columns]
        lines.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    return "\n".join(lines)
