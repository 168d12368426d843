"""The batch's morning report as the flow hands it out: rebuilt after each slide, then an
artifact that links report.html and holds the cohort table (`pipeline.morning_report`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from wsi_segment.errors import WsiSegmentError
from wsi_segment.flows.batch_interrupt import SlideFuture, ended_slide_outcome
from wsi_segment.pipeline.morning_report import BatchReport

if TYPE_CHECKING:
    from wsi_segment.pipeline.segment import SlideResult


def report_slide(morning: BatchReport, index: int, future: SlideFuture) -> None:
    """After slide `index` ends (its task's future is done): rebuild cohort.csv and
    report.html. Runs in the slide's thread, outside the flow's run context; a problem there
    never fails the slides, and the batch's end rebuilds again and warns of it once
    (`publish_morning_report`), so here it is DEBUG: not the same warning after every slide."""
    try:
        morning.add(index, ended_slide_outcome(future))
    except Exception as exc:  # whatever ended the slide is the batch's to report, not ours
        logging.getLogger(__name__).debug("report not updated: %s", exc)


def publish_morning_report(morning: BatchReport, results: list[SlideResult]) -> None:
    """The last rebuild, with every slide's result; its artifact links the page and holds
    the cohort table (`pipeline.morning_report`)."""
    logger = get_run_logger()
    try:
        report = morning.finish(results)
    except WsiSegmentError as exc:
        logger.warning("report not written: %s", exc)
        return
    if report is None:
        return
    create_table_artifact(
        report.table(), key="segment-batch-cohort", description=str(report.cohort)
    )
    create_markdown_artifact(
        f"### Morning report\n\n[{report.page}]({report.page.absolute().as_uri()}) · "
        f"[{report.cohort}]({report.cohort.absolute().as_uri()})\n",
        key="segment-batch-morning-report",
        description="cohort.csv and report.html",
    )
    logger.info("report: %s", report.page)
