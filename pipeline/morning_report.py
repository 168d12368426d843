"""The morning after a batch: `OUT/cohort.csv` and `OUT/report.html`, rebuilt from the folder.

`build_morning_report` reads every slide under OUT (`pipeline.outputs.slide_entries`), shows
each slide's own overlay thumbnail (made for the folders of older versions, which have none),
replaces the table and the page at once, and adds the finished slides to OUT's QuPath project
(`pipeline.outputs.qupath_project`). It is what `wsi-segment report OUT` runs, and
what a batch runs after each slide finishes (`BatchReport`), so a batch stopped half way
leaves a table and a page true for what finished, and at its end, with every slide's result.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.errors import OutputError
from wsi_segment.pipeline.output_files import OVERLAY_NAME, THUMBNAIL_NAME
from wsi_segment.pipeline.outputs.cohort import (
    cohort_rows,
    refuse_foreign_file,
    write_atomically,
    write_cohort,
)
from wsi_segment.pipeline.outputs.night_record import write_night
from wsi_segment.pipeline.outputs.qupath_project import (
    refuse_foreign_project,
    write_qupath_project,
)
from wsi_segment.pipeline.outputs.report_page import OURS_PREFIX, PAGE_NAME, page_html
from wsi_segment.pipeline.outputs.report_thumbnails import ensure_thumbnail, thumbnails_folder
from wsi_segment.pipeline.outputs.shared_access import unwritable_folder
from wsi_segment.pipeline.outputs.slide_entries import (
    BatchOutcome,
    Tonight,
    scan_slides,
)
from wsi_segment.pipeline.outputs.slide_entry import SlideEntry
from wsi_segment.pipeline.outputs.slide_status import DAMAGED, QUEUED

if TYPE_CHECKING:
    from wsi_segment.pipeline.segment import SlideResult

THUMBNAIL_THREADS = min(8, len(os.sched_getaffinity(0)))  # the cores pictures decode on


@dataclass(frozen=True)
class MorningReport:
    """What a build wrote: the table, the page, the QuPath project (None until a slide
    finished), and the slides they show."""

    cohort: Path
    page: Path
    entries: tuple[SlideEntry, ...]
    project: Path | None = None

    def table(self) -> list[dict[str, str | float | int | None]]:
        """cohort.csv's rows as records (a Prefect table artifact)."""
        header, *rows = cohort_rows(self.entries)
        return [dict(zip(map(str, header), row, strict=True)) for row in rows]


def build_morning_report(out_root: str | Path, tonight: Tonight) -> MorningReport:
    """Rebuild OUT's cohort.csv and report.html (`tonight`: a batch's results by output
    name, or empty for the folder alone). OutputError when OUT is not a folder, holds no
    output and no batch tonight, or a file there is not ours; a bad slide folder is a row
    that says so, never an error."""
    root = Path(out_root)
    if not root.is_dir():
        raise OutputError(f"{root} is not a folder of wsi-segment outputs; give the --out folder")
    page = root / PAGE_NAME
    refuse_foreign_file(page, OURS_PREFIX, "a report")
    refuse_foreign_project(root)
    entries = scan_slides(root, tonight)
    if not entries and not tonight:  # `report` on a slide folder, say: nothing is written
        raise OutputError(
            f"{root} holds no wsi-segment outputs (no slide's output folder, no failure "
            "record); give the --out folder of the runs"
        )
    cohort = write_cohort(root, entries)
    project = write_qupath_project(root, entries)
    thumbs = _thumbnails(root, entries)
    title = f"wsi-segment: {root.resolve().name}"
    write_atomically(page, page_html(title, entries, thumbs, project is not None))
    return MorningReport(cohort, page, tuple(entries), project)


def _thumbnails(root: Path, entries: Sequence[SlideEntry]) -> dict[str, str | None]:
    """Each slide's picture, relative to OUT, by name: the thumbnail its run wrote, or for
    a folder of an older version one made from its overlay (where missing or stale). The
    PNG decoders release the GIL, so a few threads make those on every core."""
    shown: dict[str, str | None] = {
        e.name: f"{e.name}/{THUMBNAIL_NAME}" for e in entries if e.has_thumbnail
    }
    # a damaged summary's folder: its own picture as it is (no decoding for a folder whose
    # files cannot be vouched for), the thumbnail if the run wrote one, else the overlay
    shown |= {e.name: _damaged_picture(root, e.name) for e in entries if e.status == DAMAGED}
    older = [e.name for e in entries if e.has_overlay and e.name not in shown]
    if older:
        folder = thumbnails_folder(root)
        with ThreadPoolExecutor(THUMBNAIL_THREADS) as pool:
            made = pool.map(lambda n: ensure_thumbnail(root / n / OVERLAY_NAME, folder, n), older)
            shown |= dict(zip(older, made, strict=True))
    return {e.name: shown.get(e.name) for e in entries}


def _damaged_picture(root: Path, name: str) -> str | None:
    """The picture of a folder whose summary is damaged, relative to OUT (None: none)."""
    for picture in (THUMBNAIL_NAME, OVERLAY_NAME):
        path = root / name / picture
        if not os.path.islink(path) and path.is_file():
            return f"{name}/{picture}"
    return None


def tonight_of(names: Sequence[str], results: Iterable[SlideResult | None]) -> Tonight:
    """A batch's results by output name (`names[i]` is the folder of result `i`)."""
    return {
        name: BatchOutcome(
            result.status, result.error or "", str(result.slide), result.error_class or ""
        )
        for name, result in zip(names, results, strict=True)
        if result is not None
    }


FAILED_STATUSES = ("failed", "known-failure")  # what the morning report is written for


class BatchReport:
    """The report of a batch in flight: rebuilt after each slide from what finished so far,
    one rebuild at a time (slides finish in several threads)."""

    def __init__(
        self,
        out_root: str | Path,
        names: Sequence[str],
        slides: Sequence[str],
        settled: Mapping[int, SlideResult],
    ) -> None:
        """`names`: the items' output names; `slides`: their slides' paths (the page lists
        the slides still queued); `settled`: the results decided before any slide ran (up
        to date, known failures), by index."""
        self.out_root = Path(out_root)
        self.names = list(names)
        self._queued = {n: BatchOutcome(QUEUED, "", s) for n, s in zip(names, slides, strict=True)}
        self._results = dict(tonight_of([self.names[i] for i in settled], settled.values()))
        self._lock = threading.Lock()
        self._finished = False  # after the last rebuild, a straggler's result changes nothing

    def add(self, index: int, result: SlideResult) -> MorningReport | None:
        """Take slide `index`'s result and rebuild; None when OUT does not exist (every slide
        so far failed before writing anything) or the batch has had its last rebuild."""
        with self._lock:
            if self._finished:
                return None
            self._results.update(tonight_of([self.names[index]], [result]))
            return self._rebuild()

    def finish(self, results: Sequence[SlideResult]) -> MorningReport | None:
        """The last rebuild, with every slide's settled result (failure records written).
        A night whose slides all failed before writing anything (timed out, disk full) still
        gets its report, in an OUT made for it; one stopped before any slide ended does not."""
        with self._lock:
            self._finished = True
            self._results = dict(tonight_of(self.names, results))
            if any(r.status in FAILED_STATUSES for r in results):
                try:
                    self.out_root.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise OutputError(
                        f"cannot write the report: {unwritable_folder(self.out_root, exc)}"
                    ) from exc
            return self._rebuild()

    def _rebuild(self) -> MorningReport | None:
        """The report of what is settled so far, the rest queued; the settled outcomes
        recorded for `wsi-segment report` to say the same later (`night_record`)."""
        if not self.out_root.is_dir():
            return None
        report = build_morning_report(self.out_root, self._queued | self._results)
        write_night(self.out_root, self._results)
        return report
