"""`wsi-segment report OUT`: rebuild OUT/cohort.csv and OUT/report.html from the folder.

For runs made before (single slides, older batches), by the SLURM recipe, or to refresh the
page after a slide was rerun. It reads what the runs wrote (each slide's summary.json, the
failure records) and nothing else; a bad slide folder is a row that says so. Prints where
the two files are and how many slides need a look; exit 1 (one `error:` line) when OUT is
not a folder or a file in the way is not ours.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rebuild OUT/cohort.csv and OUT/report.html from an output folder",
        description="Read every slide's summary.json and failure record under OUT and write "
        "cohort.csv (one row per slide, or per region of a --roi run) and report.html (a "
        "static page: failures first, a card per slide, the cohort's composition).",
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="the --out folder of the runs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from wsi_segment.pipeline.morning_report import build_morning_report
    from wsi_segment.pipeline.outputs.night_record import read_night
    from wsi_segment.pipeline.outputs.slide_status import PROBLEMS

    # the last batch's outcomes, where it recorded them: its statuses stay as it said them
    report = build_morning_report(args.out, read_night(args.out))
    problems = sum(e.status in PROBLEMS for e in report.entries)
    print(f"{report.page}\n{report.cohort}")
    print(f"{len(report.entries)} slide(s), {problems} need a look")
    return 0
