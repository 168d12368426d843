"""`OUT/report.html`: the page a pathologist opens the morning after a batch.

One static file, no network and no server: styles and the few lines of script (sorting the
table, the filter box) are inline, pictures are each slide's small `overlay-thumbnail.jpg`
(or, for folders of older versions, the one made in `OUT/.report/`) and links go to each
slide's own `overlay.png`, all by relative paths, so the folder can be copied or opened from
a share. Under the title, which model and parameters made the results, and when
(`report_runs`). Where OUT has its QuPath project, the page says where and how to put the results on
it. Slides that need a look come first, grouped by what went wrong (`report_problems`), then
a card per slide (thumbnail, composition bar in the model's colours, status and QC flags,
its numbers, links to its files and the slide's path), then the cohort view: composition
across slides and a table sortable by any column. A filter box narrows cards and rows to
those holding what is typed. Cards are laid out lazily by the browser
(`content-visibility`), so a thousand of them open at once. The same entries give the same
bytes: nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from urllib.parse import quote

from wsi_segment.pipeline.output_files import GEOJSON_NAME, OVERLAY_NAME, SUMMARY_NAME
from wsi_segment.pipeline.outputs.qupath_project import PROJECT_FILE, PROJECT_FOLDER, SCRIPT_NAME
from wsi_segment.pipeline.outputs.report_problems import problems_section
from wsi_segment.pipeline.outputs.report_runs import runs_line
from wsi_segment.pipeline.outputs.slide_entry import ClassArea, Region, SlideEntry
from wsi_segment.pipeline.outputs.slide_status import EMPTY_DONE, PROBLEMS, STATUS_ORDER

PAGE_NAME = "report.html"
OURS_PREFIX = "<!DOCTYPE html>\n<!-- wsi-segment report -->\n"
UNDEFINED = "n/a"  # a share of no tissue: not 0 %, there is nothing to share
QUPATH_LINK = '<a href="#qupath">QuPath</a>'
THUMB_PX = 160  # the card's picture box (CSS px); the file has twice as many for sharp screens

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.15em;margin:1.2em 0 .4em}
nav a{margin-right:1em}.tally span{margin-right:1.2em}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:330px;
content-visibility:auto;contain-intrinsic-size:330px 260px}
.card.problem{border-color:#c62828;background:#fff6f6}
.card h3{font-size:1em;margin:0 0 4px;word-break:break-all}
.card .pic{float:left;width:160px;height:120px;margin:0 8px 4px 0;background:#eee;
display:flex;align-items:center;justify-content:center;font-size:.8em;color:#777}
.card .pic img{max-width:160px;max-height:120px}
.status{display:inline-block;padding:0 6px;border-radius:3px;background:#e0e0e0;font-size:.85em}
.status.problem{background:#c62828;color:#fff}.flags{color:#b26a00;font-size:.85em}
.reason{font-size:.85em;color:#555;word-break:break-word}
.bar{display:flex;height:14px;border:1px solid #ccc;background:#fff;clear:both;margin:4px 0}
.bar span{display:block;height:100%}
table{border-collapse:collapse;font-size:.85em;background:#fff}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
.classes td:first-child i{display:inline-block;width:10px;height:10px;margin-right:4px}
#cohort-table th{cursor:pointer;background:#f0f0f0;position:sticky;top:0}
.comp{display:grid;grid-template-columns:minmax(8em,16em) minmax(0,1fr);gap:2px 8px;
align-items:center}.comp>span{overflow-wrap:anywhere}.comp .bar{margin:0}
.links a{margin-right:.8em;font-size:.85em}.path{font-size:.8em;color:#555;word-break:break-all}
.qupath{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 10px}
[hidden]{display:none!important}.runs{margin:.2em 0;padding-left:1.2em;color:#444}
details.group{margin:4px 0}details.group>summary{cursor:pointer;padding:2px 0}
details.group>.cards{margin:6px 0 10px}
#filter{font:inherit;width:min(30em,100%);margin:.6em 0 0;padding:2px 6px}
.legend span{margin-right:1em}.legend i{display:inline-block;width:10px;height:10px;
margin-right:4px}
"""

# Sorts the cohort table by the clicked column (numbers by value, empty cells last); a
# second click reverses. No library, nothing loaded.
SCRIPT = """
document.querySelectorAll('#cohort-table th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var down = th.dataset.order !== 'up';
    th.dataset.order = down ? 'up' : 'down';
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var cell = row.cells[col];
      var v = cell.dataset.v;
      return v === undefined ? cell.textContent : v === '' ? null : Number(v);
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var c = typeof x === 'number' ? x - y : String(x).localeCompare(String(y));
      return down ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

# Shows only the cards, groups and table rows whose text holds what is typed (any case); a
# group with a match opens, one without is hidden. Clearing the box shows everything again.
FILTER_SCRIPT = """
var box = document.getElementById('filter');
box.addEventListener('input', function () {
  var q = box.value.trim().toLowerCase();
  function keep(el) { return q === '' || el.textContent.toLowerCase().indexOf(q) >= 0; }
  document.querySelectorAll('article.card, #cohort-table tbody tr').forEach(function (el) {
    el.hidden = !keep(el);
  });
  document.querySelectorAll('details.group').forEach(function (g) {
    var shown = g.querySelectorAll('article.card:not([hidden])').length;
    g.hidden = shown === 0;
    if (q !== '') { g.open = shown > 0; }
  });
});
"""
FILTER_BOX = (
    '<input id="filter" type="search" placeholder="Filter slides: name, status, reason" '
    'aria-label="Filter slides by name, status or reason">'
)


def page_html(
    title: str,
    entries: Sequence[SlideEntry],
    thumbnails: Mapping[str, str | None],
    qupath_project: bool,
) -> str:
    """The whole page for `entries` (sorted by name); `thumbnails`: each slide's picture,
    relative to the page (None: its overlay could not be read); `qupath_project`: OUT has
    the QuPath project of its finished slides (`qupath_project.write_qupath_project`)."""
    order = {s: i for i, s in enumerate(STATUS_ORDER)}
    problems = sorted((e for e in entries if e.status in PROBLEMS), key=lambda e: order[e.status])
    parts = [
        f'{OURS_PREFIX}<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        runs_line(entries),
        _tally(entries),
        '<nav><a href="#problems">Needs a look</a><a href="#slides">Slides</a>'
        '<a href="#cohort">Cohort</a><a href="cohort.csv">cohort.csv</a>'
        + (QUPATH_LINK if qupath_project else "")
        + "</nav>",
        _qupath(qupath_project),
        _legend(entries),
        FILTER_BOX,
        *problems_section(problems, lambda e: _card(e, thumbnails.get(e.name))),
        f'<h2 id="slides">Slides ({len(entries) - len(problems)})</h2><div class="cards">',
        *(_card(e, thumbnails.get(e.name)) for e in entries if e.status not in PROBLEMS),
        '</div><h2 id="cohort">Cohort</h2>',
        _composition(entries),
        _table(entries),
        f"<script>{SCRIPT}{FILTER_SCRIPT}</script></body></html>\n",
    ]
    return "\n".join(parts)


def _tally(entries: Sequence[SlideEntry]) -> str:
    """How many slides in each status, the finished ones without a result (no tissue, a
    fluorescence slide) counted apart from `done` and `up to date`."""
    counts = dict.fromkeys((*STATUS_ORDER, EMPTY_DONE), 0)
    for entry in entries:
        key = EMPTY_DONE if entry.empty else entry.status
        counts[key] = counts.get(key, 0) + 1
    cells = "".join(f"<span>{n} {escape(s)}</span>" for s, n in counts.items() if n)
    return f'<p class="tally">{len(entries)} slide(s): {cells}</p>'


def _qupath(written: bool) -> str:
    """Where the QuPath project is, and the one step that puts the results on its images."""
    if not written:
        return ""
    project = f"{PROJECT_FOLDER}/{PROJECT_FILE}"
    script = SCRIPT_NAME.removesuffix(".groovy")
    return (
        f'<p id="qupath" class="qupath">QuPath project of the finished slides: <a href='
        f'"{quote(project)}">{escape(project)}</a> (QuPath 0.5 or later: <i>File &gt; Open '
        "project</i>). To put each slide's classified tissue on its image: <i>Automate &gt; "
        f"Project scripts &gt; {escape(script)}</i>, then <i>Run for project</i> (again after "
        "each night: it replaces what it imported before, never your own objects).</p>"
    )


def _links(entry: SlideEntry) -> str:
    """A finished slide's files (relative to the page) and where the slide itself is."""
    if entry.schema_version is None:  # no summary of ours: nothing of a run to link
        return ""
    folder = quote(entry.name)
    files = "".join(
        f'<a href="{folder}/{quote(name)}">{escape(name)}</a>'
        for name in (GEOJSON_NAME, SUMMARY_NAME, OVERLAY_NAME)
    )
    where = f'<div class="path">{escape(entry.slide_path)}</div>' if entry.slide_path else ""
    return f'<div class="links"><a href="{folder}/">folder</a>{files}</div>{where}'


def _legend(entries: Sequence[SlideEntry]) -> str:
    """Each class's colour and name, spelled out where the model's class_titles say it."""
    colors: dict[str, tuple[int, int, int]] = {}
    titles: dict[str, str] = {}
    for entry in entries:
        for name, color in entry.colors.items():
            colors.setdefault(name, color)
        for name, title in entry.titles.items():
            titles.setdefault(name, title)
    items = "".join(
        f'<span><i style="background:{_hex(c)}"></i>{escape(n)}'
        + (f" ({escape(titles[n])})" if n in titles else "")
        + "</span>"
        for n, c in colors.items()
    )
    return f'<p class="legend">{items}</p>' if items else ""


def _card(entry: SlideEntry, thumbnail: str | None) -> str:
    problem = entry.status in PROBLEMS
    css = "card problem" if problem else "card"
    pic = "no overlay"
    if thumbnail is not None:
        img = f'<img src="{quote(thumbnail)}" alt="overlay of {escape(entry.name)}" loading="lazy">'
        pic = f'<a href="{quote(entry.name)}/overlay.png">{img}</a>'
    elif entry.has_overlay:
        pic = "no picture"  # the overlay could not be read, or its thumbnail not written
    lines = [
        f'<article class="{css}" data-slide="{escape(entry.name)}" '
        f'data-status="{escape(entry.status)}">',
        f'<div class="pic">{pic}</div><h3>{escape(entry.name)}</h3>',
        f'<span class="status{" problem" if problem else ""}">{escape(entry.status)}</span>',
    ]
    lines.append(_links(entry))
    if entry.qc_flags:
        lines.append(f'<div class="flags">{escape("; ".join(entry.qc_flags))}</div>')
    if entry.reason:
        lines.append(f'<div class="reason">{escape(entry.reason)}</div>')
    if entry.failed_utc:
        when = entry.failed_utc[:16].replace("T", " ")
        lines.append(f'<div class="reason">failed {escape(when)} UTC</div>')
    if entry.tissue_area_um2 is not None:
        lines.append(
            f'<div class="tissue" data-area-um2="{entry.tissue_area_um2!r}">tissue '
            f"{_mm2(entry.tissue_area_um2)} mm²</div>"
        )
    if entry.classes:
        lines += [_bar(entry.classes, entry.colors), _class_table(entry)]
    for region in entry.regions:
        label = region.name + (f" [{region.qupath_class}]" if region.qupath_class else "")
        flags = "".join(f' <span class="flags">{escape(f)}</span>' for f in region.qc_flags)
        tissue = region.tissue_area_um2
        shown = "not segmented" if tissue is None else f"tissue {_mm2(tissue)} mm²"
        lines.append(
            f'<div class="region" data-region="{escape(region.name)}" '
            f'data-area-um2="{_exact(tissue)}">{escape(label)}: {shown}{flags}</div>'
        )
        lines.append(_bar(region.classes, entry.colors))
    return "".join(lines) + "</article>"


def _class_table(entry: SlideEntry) -> str:
    rows = "".join(
        f"<tr{_title(entry.titles.get(c.name))} "
        f'data-class="{escape(c.name)}" data-area-um2="{c.area_um2!r}" '
        f'data-fraction="{_exact(c.fraction)}"><td><i style="background:'
        f'{_hex(entry.colors.get(c.name))}"></i>{escape(c.name)}</td>'
        f"<td>{_percent(c.fraction)}</td><td>{_mm2(c.area_um2)} mm²</td></tr>"
        for c in entry.classes
    )
    return f'<table class="classes">{rows}</table>'


def _title(title: str | None) -> str:
    """A `title` attribute (the browser's tooltip) where there is one."""
    return f' title="{escape(title)}"' if title else ""


def _bar(classes: Sequence[ClassArea], colors: Mapping[str, tuple[int, int, int]]) -> str:
    spans = "".join(
        f'<span style="width:{100 * c.fraction:.3f}%;background:{_hex(colors.get(c.name))}" '
        f'title="{escape(c.name)} {_percent(c.fraction)}"></span>'
        for c in classes
        if c.fraction is not None and c.fraction > 0
    )
    return f'<div class="bar">{spans}</div>'


def _composition(entries: Sequence[SlideEntry]) -> str:
    rows = [
        f"<span>{escape(e.name)}</span>{_bar(e.classes, e.colors)}" for e in entries if e.classes
    ]
    return '<div class="comp">' + "".join(rows) + "</div>"


def _table(entries: Sequence[SlideEntry]) -> str:
    names: dict[str, None] = {}
    for entry in entries:
        names.update(dict.fromkeys(c.name for c in entry.classes))
    head = ["slide", "region", "region class", "status", "tissue mm²"]
    head += [*(f"{n} %" for n in names), "QC flags"]
    rows = []
    for entry in entries:
        for region, area, classes in _table_rows(entry):
            by_name = {c.name: c for c in classes}
            named = [_td(entry.name), _td(region.name if region else "")]
            named.append(_td(region.qupath_class if region else ""))
            cells = [*named, _td(entry.status), _num(area, _mm2)]
            cells += [_fraction_cell(by_name.get(n)) for n in names]
            flags = (*entry.qc_flags, *(region.qc_flags if region else ()))
            cells.append(_td("; ".join(flags)))
            rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f'<table id="cohort-table"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _table_rows(
    entry: SlideEntry,
) -> list[tuple[Region | None, float | None, Sequence[ClassArea]]]:
    """The table's rows of a slide: one per region of a `--roi` run, else the slide's."""
    if entry.regions:
        return [(r, r.tissue_area_um2, r.classes) for r in entry.regions]
    return [(None, entry.tissue_area_um2, entry.classes)]


def _td(text: str) -> str:
    return f"<td>{escape(text)}</td>"


def _num(value: float | None, shown: Callable[[float], str]) -> str:
    """A number's cell: shown rounded, sorted by its exact value (`data-v`)."""
    if value is None:
        return '<td data-v=""></td>'
    return f'<td data-v="{value!r}">{shown(value)}</td>'


def _fraction_cell(area: ClassArea | None) -> str:
    """A class's share in the cohort table: empty where the slide has no such class, "n/a"
    where its share is undefined (no tissue); both sort last."""
    if area is not None and area.fraction is None:
        return f'<td data-v="">{UNDEFINED}</td>'
    return _num(None if area is None else area.fraction, _percent_plain)


def _exact(value: float | None) -> str:
    """A number for a `data-` attribute, as Python prints it (reads back the same double);
    empty when undefined."""
    return "" if value is None else repr(value)


def _hex(color: tuple[int, int, int] | None) -> str:
    r, g, b = color or (160, 160, 160)
    return f"#{r:02x}{g:02x}{b:02x}"


def _mm2(area_um2: float) -> str:
    return f"{area_um2 / 1e6:.4f}"


def _percent(fraction: float | None) -> str:
    return UNDEFINED if fraction is None else f"{100 * fraction:.1f} %"


def _percent_plain(fraction: float) -> str:
    return f"{100 * fraction:.1f}"
