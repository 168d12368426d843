"""The page's "Needs a look" section at a lab's scale: a thousand slides, sixty failures of
two reasons, grouped and collapsed, with a filter box; checked in the HTML and in a real
browser (headless Chromium) at a laptop's and a desktop's width."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests import browser
from wsi_segment.pipeline.outputs.report_page import page_html
from wsi_segment.pipeline.outputs.report_problems import OPEN_UP_TO, problem_groups, reason_kind
from wsi_segment.pipeline.outputs.slide_entry import ClassArea, SlideEntry
from wsi_segment.pipeline.outputs.slide_status import DAMAGED, DONE, FAILED, KNOWN

COLORS = {"TE": (205, 51, 51), "NEC": (0, 255, 0), "LYM": (65, 105, 225), "TAS": (255, 165, 0)}
UNREADABLE = "{path} is not a readable slide (JPEG data ends early at tile {tile}); replace it"
NO_REGIONS = "{path}: the regions file {name}.geojson is missing; give one or drop the roi"


def done(i: int) -> SlideEntry:
    """A finished slide with its four classes' shares."""
    shares = [(i % 7 + 1) / 20, (i % 3 + 1) / 20, 0.25, 0.0]
    shares[3] = 1 - sum(shares[:3])
    classes = tuple(ClassArea(n, 1e6 * s, s) for n, s in zip(COLORS, shares, strict=True))
    return SlideEntry(
        f"S{i:04d}",
        DONE,
        slide_path=f"/lab/night/S{i:04d}.svs",
        model="luad-demo",
        tissue_area_um2=1e6,
        tissue_status="ok",
        classes=classes,
        colors=COLORS,
        created_utc="2026-11-28T02:00:00Z",
        schema_version=5,
        has_overlay=True,
    )


def failed(i: int, status: str, reason: str) -> SlideEntry:
    path = f"/lab/night/S{i:04d}.svs"
    text = reason.format(path=path, tile=i * 7, name=f"S{i:04d}")
    if status == KNOWN:
        text = f"failing since 2026-11-{20 + i % 7}: {text}"
    return SlideEntry(f"S{i:04d}", status, text, slide_path=path)


def night() -> list[SlideEntry]:
    """1,000 slides: 50 unreadable (30 new tonight, 20 known), 10 without their regions
    file, 2 damaged summaries, the rest done."""
    entries = [done(i) for i in range(1000)]
    for k, i in enumerate(range(3, 1000, 20)):  # 50 slides
        entries[i] = failed(i, FAILED if k < 30 else KNOWN, UNREADABLE)
    for i in range(5, 105, 10):  # 10 slides
        entries[i] = failed(i, FAILED, NO_REGIONS)
    for i in (8, 9):
        entries[i] = SlideEntry(f"S{i:04d}", DAMAGED, f"/out/S{i:04d}/summary.json is damaged")
    return entries


def page_of(entries: list[SlideEntry]) -> str:
    return page_html("wsi-segment: night", entries, {e.name: None for e in entries}, False)


def test_a_reason_without_the_slides_own_words_is_what_failures_share() -> None:
    a, b = failed(3, KNOWN, UNREADABLE), failed(43, KNOWN, UNREADABLE)
    assert (
        reason_kind(a)
        == reason_kind(b)
        == (
            "failing since <date>: … is not a readable slide (JPEG data ends early at tile #); "
            "replace it"
        )
    )
    assert reason_kind(failed(5, FAILED, NO_REGIONS)) == (
        "…: the regions file ….geojson is missing; give one or drop the roi"
    )


def test_sixty_failures_of_two_reasons_are_three_groups_collapsed() -> None:
    """Status first (new failures before known ones), the larger group first; every problem
    is in exactly one group; groups larger than OPEN_UP_TO start collapsed."""
    entries = night()
    groups = problem_groups([e for e in entries if e.status != DONE])
    assert [(s, len(g)) for s, _, g in groups] == [
        (FAILED, 30),
        (FAILED, 10),
        (KNOWN, 20),
        (DAMAGED, 2),
    ]
    page = page_of(entries)
    section = page[page.index('id="problems"') : page.index('id="slides"')]
    assert "Needs a look (62)" in section
    heads = re.findall(
        r'<details class="group" data-status="([^"]+)" data-count="(\d+)"( open)?>', section
    )
    assert heads == [
        (FAILED, "30", ""),
        (FAILED, "10", ""),
        (KNOWN, "20", ""),
        (DAMAGED, "2", " open"),
    ]
    assert OPEN_UP_TO < 10
    blocks = section.split('<details class="group"')[1:]
    for block, (_, _, members) in zip(blocks, groups, strict=True):
        assert re.findall(r'data-slide="([^"]+)"', block) == [e.name for e in members]
    assert "<summary>" in blocks[0] and "30 slides: " in blocks[0]


@pytest.mark.skipif(browser.missing_reason() is not None, reason=str(browser.missing_reason()))
@pytest.mark.parametrize("width", [800, 1280])
def test_the_first_screen_reaches_the_results_and_the_filter_narrows(
    tmp_path: Path, width: int
) -> None:
    """At 800 and 1,280 px: no console error, nothing wider than the window, the Slides
    section starts on the first screen (the failures collapsed above it); typing a slide's
    name leaves its card and its table row, a reason's words its group, opened."""
    page = tmp_path / "report.html"
    page.write_text(page_of(night()), encoding="utf-8")
    probe = """(() => {
      var box = document.getElementById('filter');
      function typed(text) { box.value = text; box.dispatchEvent(new Event('input')); }
      function shown(sel) {
        return Array.prototype.filter.call(document.querySelectorAll(sel),
          function (el) { return el.getClientRects().length > 0; }).length; }
      var out = {slidesTop: document.getElementById('slides').getBoundingClientRect().top,
                 wide: document.documentElement.scrollWidth, height: innerHeight};
      typed('S0500');
      out.name = [shown('article.card'), shown('#cohort-table tbody tr')];
      typed('regions file');
      out.reason = [shown('article.card'), shown('details.group'),
                    document.querySelector('details.group[data-count="10"]').open];
      typed('');
      out.cleared = [shown('#cohort-table tbody tr'), shown('details.group')];
      return JSON.stringify(out); })()"""
    load = browser.open_page(page, [probe], window=(width, 900))
    assert load.errors() == []
    found = json.loads(load.values[0])
    assert found["wide"] <= width
    assert 0 < found["slidesTop"] < found["height"]
    assert found["name"] == [1, 1]
    assert found["reason"] == [10, 1, True]
    assert found["cleared"] == [1000, 4]
