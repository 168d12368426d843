"""The line under the report page's title: which model and parameters made the results."""

from __future__ import annotations

from wsi_segment.pipeline.outputs.report_runs import run_settings, runs_line
from wsi_segment.pipeline.outputs.slide_entry import SlideEntry
from wsi_segment.pipeline.outputs.slide_status import DONE, FAILED, UP_TO_DATE

PARAMS = {"mpp": 1.0, "precision": "auto", "gate": True, "overlap": 32, "batch_size": 8}


def test_settings_are_the_output_changing_parameters_in_the_pages_order() -> None:
    assert run_settings(PARAMS) == "mpp 1.0, precision auto, gate True, overlap 32"
    assert run_settings({"mpp": None}) == "mpp from the model"
    assert run_settings(None) == run_settings([]) == ""


def test_one_line_per_model_and_parameters_the_larger_first() -> None:
    """Slides of two models and two parameter sets: a line each with its count and dates;
    a failure (no summary, no model) is in none."""
    fp32 = run_settings(PARAMS | {"precision": "fp32"})
    entries = [
        SlideEntry(
            "a",
            DONE,
            model="luad",
            model_sha256="ab" * 32,
            settings=fp32,
            created_utc="2026-11-28T02:10:00+00:00",
        ),
        SlideEntry(
            "b",
            UP_TO_DATE,
            model="luad",
            model_sha256="ab" * 32,
            settings=fp32,
            created_utc="2026-11-27T01:00:59+00:00",
        ),
        SlideEntry(
            "c",
            DONE,
            model="<crc>",
            model_sha256="cd" * 32,
            created_utc="2026-11-28T03:00:00+00:00",
        ),
        SlideEntry("d", FAILED, "not a readable slide"),
    ]
    assert runs_line(entries) == (
        '<ul class="runs">'
        "<li>2 slides: model <b>luad</b> (sha256 abababababab), made 2026-11-27 01:00 to "
        "2026-11-28 02:10 UTC; mpp 1.0, precision fp32, gate True, overlap 32</li>"
        "<li>1 slide: model <b>&lt;crc&gt;</b> (sha256 cdcdcdcdcdcd), made 2026-11-28 03:00 UTC</li>"
        "</ul>"
    )
    assert runs_line(entries[3:]) == ""
