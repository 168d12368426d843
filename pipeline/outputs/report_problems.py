"""The report page's "Needs a look" section: the slides that failed or cannot be shown,
grouped by what went wrong, so that fifty slides failing for one reason are one line to
read, not five screens of cards before the first result.

A group is the slides of one status whose reasons say the same once each slide's own name
and path, dates and numbers are taken out ("failing since 2026-11-28: /lab/a.svs is not a
readable slide" and the same of b.svs are one group). Groups come in the page's order of
statuses, the larger first; a group of more than `OPEN_UP_TO` slides starts collapsed
(`<details>`), so the page's length does not grow with a batch's failures. Nothing here
reads a clock: the same entries give the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from html import escape

from wsi_segment.pipeline.outputs.slide_entry import SlideEntry
from wsi_segment.pipeline.outputs.slide_status import STATUS_ORDER

OPEN_UP_TO = 5  # a group of at most this many slides is shown open
DATES = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+Z?)?")
NUMBERS = re.compile(r"\d+(?:\.\d+)?")
HOLE = "…"  # where a slide's own words were taken out of its reason


def reason_kind(entry: SlideEntry) -> str:
    """`entry`'s reason without what is the slide's own (its path, name, dates, numbers):
    what slides failing the same way have in common."""
    text = entry.reason
    for own in sorted({entry.slide_path, entry.name} - {""}, key=len, reverse=True):
        text = text.replace(own, HOLE)
    text = DATES.sub("<date>", text)
    return NUMBERS.sub("#", text)


def problem_groups(problems: Sequence[SlideEntry]) -> list[tuple[str, str, list[SlideEntry]]]:
    """(status, reason kind, its slides) for `problems`: statuses in the page's order, the
    larger group first, then by reason; slides by name within a group."""
    groups: dict[tuple[str, str], list[SlideEntry]] = {}
    for entry in problems:
        groups.setdefault((entry.status, reason_kind(entry)), []).append(entry)
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), -len(groups[k]), k[1]))
    return [(s, kind, sorted(groups[s, kind], key=lambda e: e.name)) for s, kind in keys]


def problems_section(
    problems: Sequence[SlideEntry], card: Callable[[SlideEntry], str]
) -> list[str]:
    """The section's HTML: its heading, then one `<details>` per group (its status, reason
    and count in the summary line; its slides' cards, made by `card`, inside)."""
    parts = [f'<h2 id="problems">Needs a look ({len(problems)})</h2>']
    if not problems:
        return [*parts, "<p>Nothing: every slide finished.</p>"]
    for status, kind, entries in problem_groups(problems):
        is_open = " open" if len(entries) <= OPEN_UP_TO else ""
        words = f"{len(entries)} slide{'s' if len(entries) != 1 else ''}"
        parts += [
            f'<details class="group" data-status="{escape(status)}" '
            f'data-count="{len(entries)}"{is_open}>',
            f'<summary><span class="status problem">{escape(status)}</span> {words}: '
            f'<span class="reason">{escape(kind or "no reason given")}</span></summary>',
            '<div class="cards">',
            *(card(e) for e in entries),
            "</div></details>",
        ]
    return parts
