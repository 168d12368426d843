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


def test_a_region_keeps_its_qupath_class_and_a_core_of_little_tissue_is_flagged() -> None:
    """A TMA core half tissue and one (fallen off the glass) 1 % tissue: each a row with its
    QuPath class; the second flagged "low tissue" (under `LOW_TISSUE` of the region), the
    slide's own flags kept on both."""
    from wsi_segment.pipeline.outputs.cohort import cohort_rows
    from wsi_segment.pipeline.outputs.slide_entry import (
        LOW_TISSUE,
        ClassArea,
        Region,
        SlideEntry,
    )

    tumour = (ClassArea("TE", 5e5, 1.0),)
    cores = (
        Region("A1", "id-a", 1e6, 5e5, tumour, "Tumor"),
        Region("B2", "id-b", 1e6, 1e4, (ClassArea("TE", 1e4, 1.0),), ""),
    )
    entry = SlideEntry("tma", "done", tissue_status="fluorescence?", classes=tumour, regions=cores)
    header, *rows = cohort_rows([entry])
    at = {name: header.index(name) for name in ("region", "region_class", "qc_flags")}
    assert [[row[i] for i in at.values()] for row in rows] == [
        ["A1", "Tumor", "fluorescence?"],
        ["B2", "", "fluorescence?; low tissue 1.0 %"],
    ]
    assert LOW_TISSUE == 0.10 and cores[0].qc_flags == () and cores[1].qc_flags
    assert Region("C3", "", 1e6, 0.0, (), "Stroma").qc_flags == ("low tissue 0.0 %",)
