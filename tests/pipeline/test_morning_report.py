"""cohort.csv and report.html from real runs: the numbers of summary.json, a row per region of a
`--roi` run, the same bytes on a rebuild, and every kind of bad folder reported, not raised."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.flows.conftest import CLASSES, save_tiny_model
from tests.wsi import qupath_exports as qp
from wsi_segment.errors import OutputError

DATA = Path(__file__).resolve().parents[1] / "data"
ALL_CLASSES = [*CLASSES, "Unclassified"]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT with three real runs of the tiny model: the CMU region, the OME-TIFF crop with two
    regions (`--roi`), and the 16 px slide (no tissue)."""
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    tmp = tmp_path_factory.mktemp("morning")
    model = save_tiny_model(tmp / "model")
    out = tmp / "out"
    params = {"precision": "fp32", "runtime": "torch", "device": "cpu"}
    segment_slide(DATA / "CMU-1-Small-Region.svs", out, SegmentParams(model, **params))
    segment_slide(DATA / "small.svs", out, SegmentParams(model, **params))
    roi = qp.two_cores(tmp / "cores.geojson")
    roi_params = SegmentParams(model, roi=roi, **params)
    segment_slide(DATA / "OS-1-detail.ome.tif", out, roi_params)
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def summary_of(out: Path, name: str) -> dict:
    return json.loads((out / name / "summary.json").read_text())


def test_rows_hold_the_numbers_of_each_summary(out: Path, tmp_path: Path) -> None:
    from wsi_segment.pipeline.morning_report import build_morning_report

    work = tmp_path / "out"
    shutil.copytree(out, work)
    report = build_morning_report(work, {})
    assert report.cohort == work / "cohort.csv" and report.page == work / "report.html"
    rows = read_rows(report.cohort)
    header = list(rows[0])
    assert header[:13] == [
        "slide", "region", "region_id", "status", "reason", "slide_path", "model",
        "model_sha256", "mpp_x", "mpp_y", "region_area_um2", "tissue_area_um2", "region_class",
    ]  # fmt: skip
    per_class = [f"{c}_{w}" for c in ALL_CLASSES for w in ("area_um2", "fraction_of_tissue")]
    assert header[13:] == [
        *per_class,
        "tissue_status",
        "qc_flags",
        "run_utc",
        "failed_utc",
        "summary_schema",
    ]
    # one row per whole-slide run, one per region of the --roi run, sorted by name
    keys = [(r["slide"], r["region"]) for r in rows]
    assert keys == [("CMU-1-Small-Region", ""), ("OS-1-detail", "A1"), ("OS-1-detail", "B2"),
                    ("small", "")]  # fmt: skip
    for row in rows:
        s = summary_of(work, row["slide"])
        assert row["status"] == "done" and row["reason"] == ""
        assert row["slide_path"] == s["slide"]["path"]
        assert row["model"] == "tiny-test" and row["model_sha256"] == s["model"]["sha256"]
        assert float(row["mpp_x"]) == s["slide"]["mpp"]["x"]
        assert float(row["mpp_y"]) == s["slide"]["mpp"]["y"]
        assert row["run_utc"] == s["created_utc"] and row["summary_schema"] == "4"
        assert row["tissue_status"] == s["tissue"]["status"]
        if row["region"]:
            [numbers] = [r for r in s["rois"] if r["name"] == row["region"]]
            assert (
                row["region_id"]
                == numbers["qupath_id"]
                == qp._uuid({"A1": "core-a", "B2": "core-b"}[row["region"]])
            )
            assert float(row["region_area_um2"]) == numbers["area_um2"] > 0
            assert row["region_class"] == "" and "classification" not in numbers  # none given
            assert float(row["tissue_area_um2"]) == numbers["tissue_area_um2"]
        else:
            numbers = s["classes"] and {"classes": s["classes"]}
            assert row["region_area_um2"] == ""
            assert float(row["tissue_area_um2"]) == s["tissue"]["area_um2"]
        for cls in ALL_CLASSES:  # exactly the summary's doubles
            values = numbers["classes"][cls]
            assert float(row[f"{cls}_area_um2"]) == values["area_um2"]
            if row["slide"] != "small":
                assert float(row[f"{cls}_fraction_of_tissue"]) == values["fraction_of_tissue"]
    cmu, small = rows[0], rows[-1]
    assert float(cmu["tissue_area_um2"]) > 0 and cmu["qc_flags"] in ("", cmu["qc_flags"])
    assert small["tissue_status"] == "none" and small["qc_flags"] == "no tissue"
    # no tissue: areas are measured zeros, a share of no tissue is undefined: an empty cell
    # (pandas/R read it as missing: docs/outputs.md), not 0.0
    assert [small[f"{c}_area_um2"] for c in ALL_CLASSES] == ["0.0"] * 5
    assert [small[f"{c}_fraction_of_tissue"] for c in ALL_CLASSES] == [""] * 5
    # a class the tiny model gave no pixel of the CMU tissue: its share is a measured 0.0,
    # its mean probability (over no pixels) null, not 0.0
    classes = summary_of(work, "CMU-1-Small-Region")["classes"]
    absent = [c for c in CLASSES if classes[c]["area_um2"] == 0.0]
    assert absent and all(classes[c]["mean_probability"] is None for c in absent)
    assert [cmu[f"{c}_fraction_of_tissue"] for c in absent] == ["0.0"] * len(absent)
    present = [c for c in CLASSES if c not in absent]
    assert all(0 < classes[c]["mean_probability"] <= 1 for c in present)

    page = report.page.read_text()
    cards = re.findall(
        r'<article class="card[^"]*" data-slide="([^"]+)" data-status="([^"]+)"', page
    )
    assert cards == [("CMU-1-Small-Region", "done"), ("OS-1-detail", "done"), ("small", "done")]
    names = ("CMU-1-Small-Region", "OS-1-detail", "small")
    for name in names:  # each run's own thumbnail
        assert f'src="{name}/overlay-thumbnail.jpg"' in page
        assert f'href="{name}/overlay.png"' in page
    # the page shows a share of no tissue as "n/a", not 0.0 %, in its card and its row
    card = page[page.index('data-slide="small"') :]
    card = card[: card.index("</article>")]
    shares = re.findall(r'data-fraction="([^"]*)"><td>.*?</td><td>([^<]*)</td>', card)
    assert shares == [("", "n/a")] * 5 and "<span style" not in card  # an empty bar
    [small_row] = re.findall(r"<tr><td>small</td>.*?</tr>", page)
    assert small_row.count('<td data-v="">n/a</td>') == 5
    assert not (work / ".report").exists()  # no picture decoded, none made
    assert "http://" not in page and "https://" not in page  # nothing from the network
    # the slide without tissue is counted apart from the done ones with a result
    tally = re.search(r'<p class="tally">(.*?)</p>', page)
    assert tally is not None and tally.group(1) == (
        "3 slide(s): <span>2 done</span><span>1 empty (no tissue or fluorescence?)</span>"
    )
    # under the title: the three runs' model, when they were made, their parameters
    made = sorted(summary_of(work, n)["created_utc"][:16].replace("T", " ") for n in names)
    model = summary_of(work, "small")["model"]
    until = f" to {made[-1]}" if made[-1] != made[0] else ""
    assert (
        f'<ul class="runs"><li>3 slides: model <b>tiny-test</b> (sha256 {model["sha256"][:12]})'
        f", made {made[0]}{until} UTC; mpp from the model, precision fp32, runtime torch, gate True, "
        "tissue auto, read level finer, output downsample 4, overlap 32, simplify tolerance "
        "1.0</li></ul>" in page
    )


def test_a_rebuild_gives_the_same_bytes_and_no_new_rows(out: Path, tmp_path: Path) -> None:
    from wsi_segment.pipeline.morning_report import build_morning_report

    work = tmp_path / "out"
    shutil.copytree(out, work)
    first = build_morning_report(work, {})
    table, page = first.cohort.read_bytes(), first.page.read_bytes()
    second = build_morning_report(work, {})
    assert second.cohort.read_bytes() == table and second.page.read_bytes() == page
    assert len(read_rows(second.cohort)) == 4


def as_an_older_version_left_it(folder: Path) -> bytes:
    """Take the run's thumbnail out of `folder` and of its summary's files, as a version
    that wrote none left it; returns the thumbnail's bytes."""
    thumbnail = folder / "overlay-thumbnail.jpg"
    made = thumbnail.read_bytes()
    thumbnail.unlink()
    summary = summary_of(folder.parent, folder.name)
    summary["output"]["files"].remove("overlay-thumbnail.jpg")
    (folder / "summary.json").write_text(json.dumps(summary))
    return made


def test_a_folder_of_an_older_version_gets_its_thumbnail_made(out: Path, tmp_path: Path) -> None:
    """No thumbnail in the folder: the report makes the same picture from overlay.png in
    OUT/.report, once; again only when the overlay changed. A file of the thumbnail's name
    that the summary does not list is not shown."""
    from wsi_segment.pipeline.morning_report import build_morning_report

    work = tmp_path / "out"
    shutil.copytree(out, work)
    cmu = as_an_older_version_left_it(work / "CMU-1-Small-Region")
    small = as_an_older_version_left_it(work / "small")
    (work / "small" / "overlay-thumbnail.jpg").write_bytes(b"someone's picture")
    page = build_morning_report(work, {}).page.read_text()
    assert 'src=".report/CMU-1-Small-Region.jpg"' in page and 'src=".report/small.jpg"' in page
    assert 'src="OS-1-detail/overlay-thumbnail.jpg"' in page  # this version's folder
    thumbs = {p.name: p.read_bytes() for p in (work / ".report").iterdir()}
    assert thumbs == {"CMU-1-Small-Region.jpg": cmu, "small.jpg": small}  # the run's bytes
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / ".report").iterdir()}
    build_morning_report(work, {})
    assert {p.name: p.stat().st_mtime_ns for p in (work / ".report").iterdir()} == stamps
    # a changed overlay (a rerun) gets a new thumbnail; nothing else is left beside them
    shutil.copy2(work / "CMU-1-Small-Region" / "overlay.png", work / "small" / "overlay.png")
    build_morning_report(work, {})
    assert (work / ".report" / "small.jpg").read_bytes() == cmu
    assert sorted(p.name for p in (work / ".report").iterdir()) == sorted(thumbs)
    assert (work / "small" / "overlay-thumbnail.jpg").read_bytes() == b"someone's picture"


def test_bad_folders_are_rows_that_say_so(out: Path, tmp_path: Path) -> None:
    """Damaged, foreign, older, newer summaries, a slide being written by another run and
    one a stopped run left: each a row and a card with its status, none raises."""
    from wsi_segment.pipeline.morning_report import build_morning_report

    work = tmp_path / "out"
    for name in ("damaged", "foreign", "older", "newer"):
        shutil.copytree(out / "CMU-1-Small-Region", work / name)
    (work / "damaged" / "summary.json").write_text('{"schema_version": 3, "slide": {')
    (work / "foreign" / "summary.json").write_text('{"name": "my notes"}')
    older = summary_of(work, "older")
    older["schema_version"] = 1
    del older["classes"]["Unclassified"]
    (work / "older" / "summary.json").write_text(json.dumps(older))
    newer = summary_of(work, "newer")
    newer["schema_version"] = 99
    (work / "newer" / "summary.json").write_text(json.dumps(newer))
    (work / ".busy.partial").mkdir()
    (work / ".gone.partial").mkdir()
    (work / "slides").mkdir()  # a folder of the lab's, not an output: no row
    lock = os.open(work / ".busy.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a run writing `busy` holds it
        report = build_morning_report(work, {})
    finally:
        os.close(lock)
    rows = {r["slide"]: r for r in read_rows(report.cohort)}
    assert {n: r["status"] for n, r in rows.items()} == {
        "busy": "in progress",
        "damaged": "damaged summary",
        "foreign": "not ours",
        "gone": "stopped",
        "newer": "newer schema",
        "older": "older schema",
    }
    assert "not readable JSON" in rows["damaged"]["reason"]
    assert str(work / "damaged" / "summary.json") in rows["damaged"]["reason"]
    assert "another run is writing" in rows["busy"]["reason"]
    assert "schema 1" in rows["older"]["reason"] and "--overwrite" in rows["older"]["reason"]
    # an older summary's numbers are still shown, as it recorded them
    assert float(rows["older"]["TE_area_um2"]) == older["classes"]["TE"]["area_um2"]
    assert "Unclassified_area_um2" not in rows["older"]  # no slide here reports it
    assert rows["damaged"]["tissue_area_um2"] == "" and rows["newer"]["TE_area_um2"] == ""
    page = report.page.read_text()
    problems = page[page.index('id="problems"') : page.index('id="slides"')]
    assert problems.count("<article") == 6 and "Needs a look (6)" in problems
    # the damaged folder's overlay is still its picture (a thumbnail made from it); the fix
    # says what to do whether or not the folder is ours
    card = problems[problems.index('data-slide="damaged"') :]
    card = card[: card.index("</article>")]
    assert '<img src="damaged/overlay-thumbnail.jpg"' in card  # the run's own, not decoded
    assert 'href="damaged/overlay.png"' in card
    assert rows["damaged"]["reason"].endswith(
        "rerun the slide with --overwrite if wsi-segment wrote this folder, or move the "
        "folder out of OUT if it did not"
    )


def test_files_not_ours_are_left_alone(out: Path, tmp_path: Path) -> None:
    from wsi_segment.pipeline.morning_report import build_morning_report

    work = tmp_path / "out"
    shutil.copytree(out / "small", work / "small")
    for name in ("cohort.csv", "report.html"):
        theirs = work / name
        theirs.write_text("patient,grade\n1,2\n")
        with pytest.raises(OutputError, match=f"{theirs} is in the way"):
            build_morning_report(work, {})
        assert theirs.read_text() == "patient,grade\n1,2\n"
        theirs.unlink()
    with pytest.raises(OutputError, match="is not a folder of wsi-segment outputs"):
        build_morning_report(tmp_path / "missing", {})


def test_a_failure_record_beside_outputs_the_newer_wins(out: Path, tmp_path: Path) -> None:
    """A failure after the outputs were made, which tonight's batch did not meet (nor does a
    rebuild by `wsi-segment report`): a known failure since its record's date, numbers of the
    earlier run kept and said so; outputs made after the failure (a run outside a batch keeps no record): done;
    a slide tonight's batch finished: done, whatever the record it removes at its end."""
    from wsi_segment.pipeline.morning_report import build_morning_report
    from wsi_segment.pipeline.outputs.failure_record import write_record
    from wsi_segment.pipeline.outputs.slide_entries import BatchOutcome

    work = tmp_path / "out"
    for name in ("later-failure", "earlier-failure", "tonight"):
        shutil.copytree(out / "small", work / name)
    created = summary_of(out, "small")["created_utc"]  # e.g. 2026-11-25T22:10:03+00:00
    for name, when in (
        ("later-failure", "2999-01-01T00:00:00Z"),
        ("earlier-failure", "2000-01-01T00:00:00Z"),
        ("tonight", "2999-01-01T00:00:00Z"),
    ):
        record = {k: "x" for k in ("fingerprint", "error_class")}
        record |= {"failed_utc": when, "message": f"{name}.svs: not a readable slide\nmore"}
        record["since_utc"] = "2026-11-20T02:00:00Z"
        assert write_record(work, name, record) is None
    tonight = {"tonight": BatchOutcome("done", "", "/slides/tonight.svs")}
    rows = {r["slide"]: r for r in read_rows(build_morning_report(work, tonight).cohort)}
    # tonight's batch did not meet it (nor does `wsi-segment report`): known since its record
    assert rows["later-failure"]["status"] == "known failure"
    assert rows["later-failure"]["reason"] == (
        "failing since 2026-11-20: later-failure.svs: not a readable slide "
        "(the outputs shown are an earlier run's)"
    )
    assert (
        float(rows["later-failure"]["tissue_area_um2"])
        == summary_of(out, "small")["tissue"]["area_um2"]
    )
    assert created < "2999" and rows["earlier-failure"]["status"] == "done"
    assert rows["tonight"]["status"] == "done" and rows["tonight"]["reason"] == ""
    # the failure's date in its row and on its card; none where the record is old news
    assert rows["later-failure"]["failed_utc"] == "2999-01-01T00:00:00Z"
    assert rows["earlier-failure"]["failed_utc"] == rows["tonight"]["failed_utc"] == ""
    page = (work / "report.html").read_text()
    card = page[page.index('data-slide="later-failure"') :]
    assert (
        '<div class="reason">failed 2999-01-01 00:00 UTC</div>' in card[: card.index("</article>")]
    )


def test_a_slide_another_run_was_writing_is_shown_as_its_folder_says(
    out: Path, tmp_path: Path
) -> None:
    """Two batches into one OUT at once: the one that found the slide's lock held failed it
    (OutputBusy), and its cohort.csv said "failed" though the folder held the other batch's
    finished run. A busy slide is its folder's news; any other failure still wins."""
    from wsi_segment.pipeline.morning_report import build_morning_report
    from wsi_segment.pipeline.outputs.slide_entries import BatchOutcome

    work = tmp_path / "out"
    for name in ("busy", "broken"):
        shutil.copytree(out / "small", work / name)
    busy = "out/busy: another wsi-segment run is writing this output right now; wait for it"
    tonight = {
        "busy": BatchOutcome("failed", busy, "/slides/busy.svs", "OutputBusy"),
        "broken": BatchOutcome("failed", "broken.svs: unreadable", "/b.svs", "SlideError"),
    }
    rows = {r["slide"]: r for r in read_rows(build_morning_report(work, tonight).cohort)}
    assert (rows["busy"]["status"], rows["busy"]["reason"]) == ("done", "")
    assert rows["broken"]["status"] == "failed"


def test_a_batch_report_rebuilds_as_slides_finish(out: Path, tmp_path: Path) -> None:
    """What a batch hands over: the slides settled before it ran, each slide as it ends (a
    failure without a record still gets its row), the last rebuild; nothing after it."""
    from wsi_segment.pipeline.morning_report import BatchReport
    from wsi_segment.pipeline.segment import SlideResult

    work = tmp_path / "out"
    names = ["small", "lost", "CMU-1-Small-Region"]
    up_to_date = SlideResult("/s/small.svs", "up-to-date", work / "small")
    slides = [
        "/s/small.svs",
        "/s/lost.svs",
        "https://lab.example/CMU-1-Small-Region.svs?X-Amz-Signature=s",
    ]
    report = BatchReport(work, names, slides, {0: up_to_date})
    failed = SlideResult("/s/lost.svs", "failed", None, {}, "/s/lost.svs: disk full\nmore")
    assert report.add(1, failed) is None  # OUT does not exist yet: nothing to write
    shutil.copytree(out / "small", work / "small")
    mid = report.add(1, failed)
    rows = read_rows(mid.cohort)
    assert [(r["slide"], r["status"], r["reason"], r["slide_path"]) for r in rows] == [
        # the slide still to run is listed (its URL without its signature)
        (
            "CMU-1-Small-Region",
            "queued",
            "not yet run",
            "https://lab.example/CMU-1-Small-Region.svs?<query removed>",
        ),
        ("lost", "failed", "/s/lost.svs: disk full", "/s/lost.svs"),
        ("small", "up to date", "", str(DATA / "small.svs")),  # the summary's path
    ]
    assert "<span>1 queued</span>" in mid.page.read_text()
    shutil.copytree(out / "CMU-1-Small-Region", work / "CMU-1-Small-Region")
    done = SlideResult("/s/CMU-1-Small-Region.svs", "done", work / "CMU-1-Small-Region")
    last = report.finish([up_to_date, failed, done])
    assert [(e.name, e.status) for e in last.entries] == [
        ("CMU-1-Small-Region", "done"),
        ("lost", "failed"),
        ("small", "up to date"),
    ]
    assert report.add(1, done) is None  # after the last rebuild
    assert len(read_rows(last.cohort)) == 3
    # `wsi-segment report` the morning after says what the night said (its record)
    from wsi_segment.pipeline.morning_report import build_morning_report
    from wsi_segment.pipeline.outputs.night_record import read_night

    night = read_night(work)
    assert {n: o.status for n, o in night.items()} == {
        "CMU-1-Small-Region": "done",
        "lost": "failed",
        "small": "up-to-date",
    }
    again = build_morning_report(work, night)
    assert [(e.name, e.status) for e in again.entries] == [(e.name, e.status) for e in last.entries]
    assert again.page.read_bytes() == last.page.read_bytes()
    # a run after the night re-made a slide: its own folder is the news, not the night's word
    summary = summary_of(work, "small")
    summary["created_utc"] = "2999-01-01T00:00:00+00:00"
    (work / "small" / "summary.json").write_text(json.dumps(summary))
    later = build_morning_report(work, read_night(work))
    assert dict((e.name, e.status) for e in later.entries)["small"] == "done"
    # a record that is not ours is no record: the folder alone
    (work / ".report" / "night.json").write_text('{"kind": "notes"}')
    assert read_night(work) == {}


def test_a_night_whose_slides_all_failed_before_writing_still_gets_its_report(
    tmp_path: Path,
) -> None:
    """Every slide timed out (or found the disk full) before its folder existed: the batch
    made no OUT and left the lab no page saying so. A batch stopped before any slide ended
    still writes nothing."""
    from wsi_segment.pipeline.morning_report import BatchReport
    from wsi_segment.pipeline.segment import SlideResult

    work = tmp_path / "new" / "out"
    stopped = [
        SlideResult("/s/a.svs", "interrupted", None),
        SlideResult("/s/b.svs", "not started", None),
    ]
    assert BatchReport(work, ["a", "b"], ["a.svs", "b.svs"], {}).finish(stopped) is None
    assert not (tmp_path / "new").exists()
    failed = [
        SlideResult(f"/s/{n}.svs", "failed", None, {}, f"/s/{n}.svs: timed out") for n in "ab"
    ]
    report = BatchReport(work, ["a", "b"], ["a.svs", "b.svs"], {}).finish(failed)
    assert report is not None and report.page == work / "report.html" and report.page.is_file()
    rows = read_rows(report.cohort)
    assert [(r["slide"], r["status"], r["reason"]) for r in rows] == [
        ("a", "failed", "/s/a.svs: timed out"),
        ("b", "failed", "/s/b.svs: timed out"),
    ]


def test_names_are_text_in_the_page_and_the_table(out: Path, tmp_path: Path) -> None:
    """A slide name with markup, quotes, commas and non-ASCII text: escaped in the page,
    quoted in the CSV, linked by its URL-quoted path."""
    from urllib.parse import quote

    from wsi_segment.pipeline.morning_report import build_morning_report

    name = 'a "b", <img src=x onerror=alert(1)> & ü #1'  # a folder name has no '/'
    work = tmp_path / "out"
    shutil.copytree(out / "CMU-1-Small-Region", work / name)
    report = build_morning_report(work, {})
    [row] = read_rows(report.cohort)
    assert row["slide"] == name
    page = report.page.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert f'href="{quote(name)}/overlay.png"' in page
    assert f'src="{quote(name + "/overlay-thumbnail.jpg")}"' in page


def test_an_unreadable_overlay_of_an_older_folder_is_a_card_without_picture(
    out: Path, tmp_path: Path
) -> None:
    """An overlay.png cut short, or not a PNG at all: the card says "no picture", no
    thumbnail is left for it, and the other slides' pictures are made (a 16-bit PNG's by
    Pillow)."""
    import imagecodecs
    import numpy as np

    from wsi_segment.pipeline.morning_report import build_morning_report

    work = tmp_path / "out"
    for name in ("cut", "text", "deep", "CMU-1-Small-Region"):
        shutil.copytree(out / "CMU-1-Small-Region", work / name)
        as_an_older_version_left_it(work / name)
    overlay = (out / "CMU-1-Small-Region" / "overlay.png").read_bytes()
    (work / "cut" / "overlay.png").write_bytes(overlay[: len(overlay) // 2])
    (work / "text" / "overlay.png").write_text("not a picture")
    deep = np.full((30, 40, 3), 40000, np.uint16)  # 16 bits a channel: not what runs write
    (work / "deep" / "overlay.png").write_bytes(imagecodecs.png_encode(deep))
    page = build_morning_report(work, {}).page.read_text()
    cards = dict(
        re.findall(r'data-slide="([^"]+)" data-status="done"><div class="pic">(.*?)</div>', page)
    )
    assert cards["cut"] == cards["text"] == "no picture"
    assert 'src=".report/CMU-1-Small-Region.jpg"' in cards["CMU-1-Small-Region"]
    assert 'src=".report/deep.jpg"' in cards["deep"]
    assert sorted(p.name for p in (work / ".report").iterdir()) == [
        "CMU-1-Small-Region.jpg",
        "deep.jpg",
    ]


def test_a_tma_s_cores_are_rows_with_their_class_the_missing_and_the_empty_flagged(
    tmp_path: Path,
) -> None:
    """A real run over TMA-like regions of the tissue-free 16 px slide: a classified core
    (its QuPath class a column, "low tissue 0.0 %": nothing fell on it) and a core QuPath
    marks missing (a row of its own, "missing core", no tissue figure: never segmented)."""
    from wsi_segment.pipeline.morning_report import build_morning_report
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    cores = [
        qp.annotation(qp.rect(0, 0, 8, 16), "core-a1", name="A1", cls="Tumor"),
        qp.tma_core(8, 4, 8, "A2", missing=True),
    ]
    roi = qp.export(tmp_path / "cores.geojson", cores)
    params = SegmentParams(
        save_tiny_model(tmp_path / "model"), roi=roi, precision="fp32", runtime="torch"
    )
    result = segment_slide(DATA / "small.svs", tmp_path / "out", params)
    [present, missing] = json.loads((result.out_dir / "summary.json").read_text())["rois"]
    assert present["classification"] == "Tumor" and present["tissue_area_um2"] == 0.0
    assert (
        missing
        == {
            "name": "A2",
            "qupath_id": cores[1]["id"],
            "area_um2": missing["area_um2"],
            "missing": True,
        }
        and missing["area_um2"] > 0
    )
    report = build_morning_report(tmp_path / "out", {})
    rows = [
        (r["region"], r["region_class"], r["tissue_area_um2"], r["qc_flags"])
        for r in read_rows(report.cohort)
    ]
    assert rows == [
        ("A1", "Tumor", "0.0", "no tissue; low tissue 0.0 %"),
        ("A2", "", "", "no tissue; missing core"),
    ]
    page = report.page.read_text()
    assert "A1 [Tumor]: tissue 0.0000 mm²" in page
    assert 'A2: not segmented <span class="flags">missing core</span>' in page
