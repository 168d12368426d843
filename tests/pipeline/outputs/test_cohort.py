"""cohort.csv's columns (`pipeline/outputs/cohort.py`); its rows and files are tested through
the morning report (tests/flows/test_batch_report.py, tests/pipeline/test_morning_report.py)."""

from __future__ import annotations


def test_no_class_name_gives_one_of_the_cohort_tables_own_columns() -> None:
    """A class `tissue` or `region` made cohort.csv's `tissue_area_um2` / `region_area_um2`
    twice (pandas then read the class's area as `tissue_area_um2.1`): such names are
    reserved, and every fixed column a class's could equal is."""
    from wsi_segment.models.labels import RESERVED_NAMES
    from wsi_segment.pipeline.outputs.cohort import LEADING, TRAILING, header

    per_class = ("_area_um2", "_fraction_of_tissue")
    for column in (*LEADING, *TRAILING):
        for suffix in per_class:
            if column.endswith(suffix):
                assert column.removesuffix(suffix) in RESERVED_NAMES, column
    columns = header(["TE", "NEC", "Unclassified"])
    assert len(set(columns)) == len(columns)
