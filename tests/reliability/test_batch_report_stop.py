"""A batch stopped half way leaves cohort.csv and report.html true for what finished.

A real `wsi-segment batch` subprocess: a small slide that finishes, then a slowed copy of the
CMU slide that is interrupted mid-inference, and a third never started. While the CMU slide
runs, `wsi-segment report` (another process's view of the same folder) shows it in progress;
after Ctrl-C the batch's own rebuild shows only the finished slide.
"""

from __future__ import annotations

import csv
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import foreground_signals
from tests.reliability.conftest import REPO, cli_env
from tests.reliability.test_batch_signals import batch_cmd, slow_folder, wait_for_chunks
from tests.reliability.test_interruption import SLOW


def statuses(out: Path) -> list[tuple[str, str]]:
    with open(out / "cohort.csv", encoding="utf-8", newline="") as f:
        return [(row["slide"], row["status"]) for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_stopped_batch_leaves_a_true_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    from wsi_segment.pipeline.morning_report import build_morning_report

    folder, out = slow_folder(tmp_path), tmp_path / "out"
    extra = ("--mpp", "0.5", "--concurrency", "1", "--workers", "0", *SLOW)
    with foreground_signals():
        proc = subprocess.Popen(
            batch_cmd(folder, tiny_model_dir, out, *extra),
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    wait_for_chunks(proc, out / ".b-cmu.partial")
    # rebuilt by the batch when a-small finished, before b-cmu started
    assert statuses(out) == [("a-small", "done")]
    # the folder as another process sees it now: b-cmu is being written by the batch
    seen = build_morning_report(out, {})
    assert [(e.name, e.status) for e in seen.entries] == [
        ("a-small", "done"),
        ("b-cmu", "in progress"),
    ]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    # the interrupted slide cleaned up, then the batch rebuilt: only what finished is left
    assert statuses(out) == [("a-small", "done")]
    page = (out / "report.html").read_text()
    assert page.count("<article") == 1 and 'data-slide="a-small"' in page
    assert f"report: {out / 'report.html'}" in stdout
