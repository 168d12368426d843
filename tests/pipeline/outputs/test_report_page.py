"""report.html's parts that need no run (the whole page is tested on real runs in
tests/pipeline/test_morning_report.py and, in Chromium, tests/flows/test_batch_report.py)."""

from __future__ import annotations

from wsi_segment.pipeline.outputs.report_page import page_html
from wsi_segment.pipeline.outputs.slide_entry import ClassArea, SlideEntry
from wsi_segment.pipeline.outputs.slide_status import DONE


def test_class_names_are_spelled_out_where_the_model_gives_titles() -> None:
    """The legend reads "TE (Tumor epithelial)" and the card's class row carries the title
    (the browser's tooltip) for a model with class_titles; a class without one stays its
    code, with no empty title."""
    titles = {"TE": "Tumor epithelial", "NEC": "<Necrosis>"}
    classes = tuple(ClassArea(n, 1e6, 0.25) for n in ("TE", "NEC", "LYM", "TAS"))
    colors = {"TE": (205, 51, 51), "NEC": (0, 255, 0), "LYM": (65, 105, 225), "TAS": (1, 2, 3)}
    entry = SlideEntry("a", DONE, classes=classes, colors=colors, titles=titles, schema_version=5)
    page = page_html("t", [entry], {"a": None}, False)
    assert (
        '<p class="legend"><span><i style="background:#cd3333"></i>TE (Tumor epithelial)</span>'
        '<span><i style="background:#00ff00"></i>NEC (&lt;Necrosis&gt;)</span>'
        '<span><i style="background:#4169e1"></i>LYM</span>'
        '<span><i style="background:#010203"></i>TAS</span></p>'
    ) in page
    assert '<tr title="Tumor epithelial" data-class="TE"' in page
    assert '<tr data-class="LYM"' in page and 'title=""' not in page
