"""A presigned URL's query is read, never written down: the slide is fetched by the whole URL,
while summary.json, cohort.csv, the report page, the geojson and every line the CLI and
Prefect print name it `?<query removed>` (`wsi.shown_path`). The query is signed anew each
night for the same object: the slide is the same, up to date in the same output folder.

Through the real CLI, against a real HTTP server (Python's, which ignores the query as a
store ignores a signature it accepts) serving the CMU slide.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import run_cli

NAME = "CMU-1-Small-Region"


def presigned(base: str, name: str, night: int) -> tuple[str, tuple[str, ...]]:
    """An S3-style presigned URL of `name` as signed on `night`, and the secrets it holds."""
    key, signature = f"AKIAFAKEKEY{night}", f"5ec2e75161afe{night}"
    query = (
        f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={key}%2F2026112{night}%2Fus-east-1"
        f"%2Fs3%2Faws4_request&X-Amz-Expires=86400&X-Amz-Signature={signature}"
    )
    return f"{base}/{name}?{query}", (key, signature)


def files_quoting(folder: Path, secrets: tuple[str, ...]) -> list[str]:
    """Every file under `folder` (hidden ones too) whose bytes hold one of `secrets`."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and any(s.encode() in path.read_bytes() for s in secrets)
    )


def test_a_presigned_url_is_read_but_its_query_is_never_written_down(
    http_folder: tuple[Path, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Its `?X-Amz-Credential=...&X-Amz-Signature=...` was written whole into summary.json
    (`slide.path`, `command`), cohort.csv, the report page and the terminal; and the next
    night's URL, signed anew, was taken for another slide of the same name and refused."""
    served, base = http_folder
    shutil.copy(CMU_SLIDE, served / f"{NAME}.svs")
    out = tmp_path / "out"
    shown = f"{base}/{NAME}.svs?<query removed>"

    # the slide taken 4x finer than it is: a sixteenth of the model tiles (the URL is the
    # subject, not the pixels); the batch asks the same, so the slide is up to date
    finer = ["--mpp", "0.125"]
    url, secrets = presigned(base, f"{NAME}.svs", 1)  # night 1: the URL on the command line
    first = run_cli([url, "--model", tiny_model_dir, "--out", out, *finer])
    assert first.code == 0, first.stderr[-3000:]
    said = first.stdout + first.stderr
    assert not [s for s in secrets if s in said], said[-3000:]
    assert first.stdout.startswith(f"{shown}: done in ")
    summary = json.loads((out / NAME / "summary.json").read_text())
    assert summary["slide"]["path"] == shown
    assert f"'{shown}' --model {tiny_model_dir} --out {out}" in summary["command"]
    assert files_quoting(out, secrets) == []

    # night 2: signed anew, in a batch's manifest, with a slide the store no longer has
    tonight, new_secrets = presigned(base, f"{NAME}.svs", 2)
    gone, gone_secrets = presigned(base, "gone.svs", 2)
    manifest = tmp_path / "tonight.csv"
    manifest.write_text(f"slide\n{tonight}\n{gone}\n")
    second = run_cli(["batch", manifest, "--model", tiny_model_dir, "--out", out, *finer])
    assert second.code == 1, second.stderr[-3000:]  # gone.svs failed
    every_secret = secrets + new_secrets + gone_secrets
    said = second.stdout + second.stderr
    assert not [s for s in every_secret if s in said], said[-3000:]
    assert f"| {shown} | up-to-date | {out / NAME} |" in second.stdout
    assert f"error: {base}/gone.svs?<query removed>: not a readable slide" in second.stderr
    assert json.loads((out / NAME / "summary.json").read_text()) == summary  # not run again
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        NAME,
        "cohort.csv",
        "report.html",
    ]
    with open(out / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = {row["slide"]: row for row in csv.DictReader(f)}
    assert (rows[NAME]["status"], rows[NAME]["slide_path"]) == ("up to date", shown)
    assert rows["gone"]["status"] == "failed"
    assert rows["gone"]["slide_path"] == f"{base}/gone.svs?<query removed>"
    assert rows["gone"]["reason"].startswith(f"{base}/gone.svs?<query removed>: not a readable")
    assert f"{base}/gone.svs?&lt;query removed&gt;" in (out / "report.html").read_text()
    assert files_quoting(out, every_secret) == []
