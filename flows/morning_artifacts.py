"""The batch's morning report as the flow hands it out: an artifact that links report.html
and holds the cohort table (`pipeline.morning_report`; the loop rebuilds both after each
slide and at its end: `flows.batch_loop`)."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from wsi_segment.pipeline.morning_report import MorningReport


def publish_morning_report(report: MorningReport | None) -> None:
    """The artifact of the batch's morning report (`flows.batch_loop.finish_morning_report`
    wrote it): a link to the page, and the cohort table."""
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
    get_run_logger().info("report: %s", report.page)
