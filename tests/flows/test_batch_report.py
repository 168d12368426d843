"""The morning after a real batch: cohort.csv and report.html in OUT, a rerun that adds no
row, and the page opened in a real browser (headless Chromium). The batch loop writes them
the same behind both doors; this runs it through the terminal's (`flows.terminal_batch`),
which needs no Prefect server. The flow's artifacts of the same report: tests/flows/
test_batch_flow.py::test_batch_isolates_a_broken_slide_and_resumes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests import browser
from tests.flows.conftest import BROKEN, CMU, DATA
from tests.wsi import qupath_exports as qp

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"  # kept after the run (CI uploads it; .gitignore'd)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def batch_out(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT after a batch of two real slides and a broken one, then a `--roi` run of a third
    slide into the same OUT, then the same batch again (everything up to date or known)."""
    from wsi_segment.flows.batch_loop import BatchRequest
    from wsi_segment.flows.terminal_batch import run_terminal_batch
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    tmp = tmp_path_factory.mktemp("batch-report")
    folder, out = tmp / "in", tmp / "out"
    folder.mkdir()
    for src in (CMU, DATA / "small.svs", BROKEN):
        shutil.copy2(src, folder / src.name)
    options = {"precision": "fp32", "runtime": "torch"}
    params = SegmentParams(tiny_model, **options)
    request = BatchRequest(str(folder), str(out), params, workers=0)
    first = run_terminal_batch(request, quiet=True)
    assert [(Path(r.slide).name, r.status) for r in first] == [
        ("CMU-1-Small-Region.svs", "done"),
        ("broken.svs", "failed"),
        ("small.svs", "done"),
    ]
    rows = read_rows(out / "cohort.csv")
    assert [(r["slide"], r["status"]) for r in rows] == [
        ("CMU-1-Small-Region", "done"),
        ("broken", "failed"),
        ("small", "done"),
    ]
    assert "not a readable slide" in rows[1]["reason"] and "\n" not in rows[1]["reason"]
    assert rows[1]["slide_path"] == str(folder / "broken.svs") and rows[1]["model"] == ""

    roi = qp.two_cores(tmp / "cores.geojson")
    segment_slide(DATA / "OS-1-detail.ome.tif", out, SegmentParams(tiny_model, roi=roi, **options))

    again = run_terminal_batch(request, quiet=True)
    # the broken slide is a known failure now: nothing failed anew
    assert [r.status for r in again] == ["up-to-date", "known-failure", "up-to-date"]
    return out


def test_the_table_after_a_rerun_has_each_slide_once(batch_out: Path) -> None:
    rows = read_rows(batch_out / "cohort.csv")
    keys = [(r["slide"], r["region"]) for r in rows]
    assert keys == [
        ("CMU-1-Small-Region", ""),
        ("OS-1-detail", "A1"),
        ("OS-1-detail", "B2"),
        ("broken", ""),
        ("small", ""),
    ]
    statuses = {r["slide"]: r["status"] for r in rows}
    assert statuses == {
        "CMU-1-Small-Region": "up to date",
        "OS-1-detail": "done",  # not in tonight's batch: finished, from the folder
        "broken": "known failure",
        "small": "up to date",
    }
    [broken] = [r for r in rows if r["slide"] == "broken"]
    assert (
        broken["reason"].startswith("failing since 20")
        and "not a readable slide" in broken["reason"]
    )
    summary = json.loads((batch_out / "CMU-1-Small-Region" / "summary.json").read_text())
    [cmu] = [r for r in rows if r["slide"] == "CMU-1-Small-Region"]
    assert float(cmu["tissue_area_um2"]) == summary["tissue"]["area_um2"] > 0
    for cls, values in summary["classes"].items():
        assert float(cmu[f"{cls}_area_um2"]) == values["area_um2"]
        assert float(cmu[f"{cls}_fraction_of_tissue"]) == values["fraction_of_tissue"]


# what each card shows: its status, its tissue area and each class's (exact values in data-*)
CARDS_JS = """JSON.stringify(Array.from(document.querySelectorAll('article.card')).map(c => ({
  slide: c.dataset.slide, status: c.dataset.status,
  tissue: c.querySelector('.tissue') && c.querySelector('.tissue').dataset.areaUm2,
  tissueText: c.querySelector('.tissue') && c.querySelector('.tissue').textContent,
  classes: Array.from(c.querySelectorAll('table.classes tr')).map(r => ({
    name: r.dataset.class, area: r.dataset.areaUm2, fraction: r.dataset.fraction,
    text: Array.from(r.cells).slice(1).map(x => x.textContent)})),
  picture: !!(c.querySelector('img') && c.querySelector('img').naturalWidth > 0)})))"""
# click "tissue mm²" twice: descending, then the slide names in that order
SORT_JS = """(() => { const th = Array.from(document.querySelectorAll('#cohort-table th'))
  .find(h => h.textContent === 'tissue mm²'); th.click(); th.click();
  return Array.from(document.querySelectorAll('#cohort-table tbody tr'))
  .map(r => r.cells[0].textContent + '/' + r.cells[1].textContent); })()"""

# every element whose box leaves the page's width (the window less its scroll bar), and the
# width the page scrolls to; each picture's source
BOUNDS_JS = """JSON.stringify({width: document.documentElement.clientWidth,
  scrolls: document.documentElement.scrollWidth,
  outside: Array.from(document.querySelectorAll('body *')).filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && (r.left < 0 || r.right > document.documentElement.clientWidth); })
    .map(e => e.tagName + '.' + e.className),
  bars: Array.from(document.querySelectorAll('.comp .bar')).map(
    e => e.getBoundingClientRect().right),
  pictures: Array.from(document.querySelectorAll('article.card img')).map(
    e => e.getAttribute('src'))})"""
SCREENSHOT = (1120, 1000)  # README's picture (docs/report.png)


@pytest.mark.skipif(browser.missing_reason() is not None, reason=str(browser.missing_reason()))
def test_the_page_in_a_real_browser(batch_out: Path) -> None:
    """Chromium opens report.html from disk at README's screenshot width: no request leaves
    the file system, no console error, nothing wider than the page (the composition bars
    end inside it), one card per slide (failures first) with the numbers of its
    summary.json, every picture (each run's own thumbnail) loads, the table sorts; the
    screenshot is kept in test-artifacts/."""
    load = browser.open_page(
        batch_out / "report.html", [CARDS_JS, SORT_JS, BOUNDS_JS], window=SCREENSHOT
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.png").write_bytes(load.screenshot)
    assert load.requests and all(url.startswith("file://") for url in load.requests)
    assert load.errors() == []
    bounds = json.loads(load.values[2])
    assert bounds["outside"] == [] and bounds["scrolls"] == bounds["width"] <= SCREENSHOT[0]
    assert len(bounds["bars"]) == 3 and max(bounds["bars"]) <= bounds["width"]
    assert bounds["pictures"] == [
        f"{name}/overlay-thumbnail.jpg" for name in ("CMU-1-Small-Region", "OS-1-detail", "small")
    ]
    cards = json.loads(load.values[0])
    assert [(c["slide"], c["status"]) for c in cards] == [
        ("broken", "known failure"),  # failures first
        ("CMU-1-Small-Region", "up to date"),
        ("OS-1-detail", "done"),
        ("small", "up to date"),
    ]
    assert cards[0]["classes"] == [] and cards[0]["tissue"] is None
    for card in cards[1:]:
        summary = json.loads((batch_out / card["slide"] / "summary.json").read_text())
        assert float(card["tissue"]) == summary["tissue"]["area_um2"]
        assert card["tissueText"] == f"tissue {summary['tissue']['area_um2'] / 1e6:.4f} mm²"
        assert [c["name"] for c in card["classes"]] == list(summary["classes"])
        for shown in card["classes"]:
            values = summary["classes"][shown["name"]]
            fraction = values["fraction_of_tissue"]
            assert float(shown["area"]) == values["area_um2"]
            if fraction is None:  # no tissue: a share of nothing is shown as such, not 0 %
                assert shown["fraction"] == "" and card["slide"] == "small"
            else:
                assert float(shown["fraction"]) == fraction
            assert shown["text"] == [
                "n/a" if fraction is None else f"{100 * fraction:.1f} %",
                f"{values['area_um2'] / 1e6:.4f} mm²",
            ]
        assert card["picture"]  # the thumbnail beside the page loaded
    assert [c["text"][0] for c in cards[-1]["classes"]] == ["n/a"] * 5  # small: no tissue
    order = load.values[1]
    areas = {
        (r["slide"], r["region"]): r["tissue_area_um2"] for r in read_rows(batch_out / "cohort.csv")
    }
    expected = sorted(
        (k for k, v in areas.items() if v), key=lambda k: float(areas[k]), reverse=True
    )
    assert order[: len(expected)] == [f"{s}/{r}" for s, r in expected]
    assert order[len(expected) :] == ["broken/"]  # no number: last


# each name of the composition: the width its text takes and the width of its column
NAMES_JS = """JSON.stringify(Array.from(document.querySelectorAll('.comp > span')).map(
  e => [e.textContent, e.scrollWidth, e.clientWidth]))"""


@pytest.mark.skipif(browser.missing_reason() is not None, reason=str(browser.missing_reason()))
def test_a_long_slide_name_stays_in_its_column(batch_out: Path, tmp_path: Path) -> None:
    """A name with nowhere to break (a scanner's underscores) wraps inside the composition's
    name column instead of running under the bars; nothing leaves the page."""
    from wsi_segment.pipeline.morning_report import build_morning_report

    long_name = "TCGA_05_4244_01Z_00_DX1_d4ff32cd_38cf_40ea_8213_45c2b100ac01_scan2_x40"
    work = tmp_path / "out"
    shutil.copytree(batch_out, work, ignore=shutil.ignore_patterns(".*.lock"))
    shutil.copytree(batch_out / "small", work / long_name)
    build_morning_report(work, {})
    load = browser.open_page(work / "report.html", [NAMES_JS, BOUNDS_JS], window=SCREENSHOT)
    names = json.loads(load.values[0])
    assert [n for n, _, _ in names] == [
        "CMU-1-Small-Region",
        "OS-1-detail",
        long_name,
        "small",
    ]
    assert all(text <= column for _, text, column in names), names
    bounds = json.loads(load.values[1])
    assert bounds["outside"] == [] and bounds["scrolls"] == bounds["width"]


def test_names_a_spreadsheet_would_run_are_written_as_text(batch_out: Path, tmp_path: Path) -> None:
    """A slide file (or QuPath region) anyone may name `=HYPERLINK(...)`: cohort.csv wrote it
    as it is, and Excel or LibreOffice ran it as a formula. Such text gets a leading `'`."""
    from wsi_segment.pipeline.morning_report import build_morning_report

    formulas = ['=HYPERLINK("x.example","open")', "+1+2", "-2+3", "@SUM(A1)"]  # no /: folders
    work = tmp_path / "out"
    shutil.copytree(batch_out, work, ignore=shutil.ignore_patterns(".*.lock"))
    for name in formulas:
        shutil.copytree(batch_out / "small", work / name)
    build_morning_report(work, {})
    with (work / "cohort.csv").open(newline="") as fh:
        rows = {row["slide"]: row for row in csv.DictReader(fh)}
    assert {"'" + name for name in formulas} <= set(rows)
    assert rows["'-2+3"]["tissue_area_um2"] == rows["small"]["tissue_area_um2"]  # numbers as is
    assert not any(
        cell.startswith(("=", "+", "-", "@")) for row in rows.values() for cell in row.values()
    )
