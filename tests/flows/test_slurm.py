"""deploy/slurm_dask_jobqueue.py on a real single-node SLURM (Debian's slurm-wlm + munge),
set up by deploy/slurm-single-node.sh as its header says: a batch of two slides through one
CPU worker job gives the same files as a local batch. Needs root and the packages; skipped,
saying why, elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import without_report
from tests.flows.conftest import output_files, write_synthetic_slide

pytestmark = pytest.mark.slow
pytest.importorskip("dask_jobqueue")  # the recipe's cluster

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "deploy" / "slurm_dask_jobqueue.py"


def test_a_batch_through_slurm_jobs_equals_a_local_batch(
    slurm: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for i, name in enumerate(("a", "b")):
        write_synthetic_slide(slides / f"{name}.tif", (1536, 1024), seed=20 + i)
    on_slurm = tmp_path / "slurm-out"
    recipe = [
        sys.executable, str(RECIPE), str(slides), "--out", str(on_slurm),
        "--model", str(tiny_model), "--gpus", "0", "--cores", "2", "--memory", "2GiB",
        "--jobs", "1", "--walltime", "00:20:00",
        "--shared-temp-directory", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(recipe, cwd=tmp_path, env=slurm, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    # the worker ran as a SLURM job (and the job is gone once the run ended)
    log_file = Path(slurm["SLURM_CONF"]).parent / "slurmctld.log"
    submitted = log_file.read_text().count("_slurm_rpc_submit_batch_job: JobId=")
    assert submitted >= 1
    queue = subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True)
    assert queue.stdout.strip() == ""
    # the run's certificates removed (and dask-jobqueue made none of its own)
    assert not list(tmp_path.glob(".wsi-segment-tls-*")) + list(tmp_path.glob(".dask-jobqueue.*"))
    # what `wsi-segment batch` prints: the table, the tally, where the report is; no traceback
    assert f"| {slides / 'a.tif'} | done |" in done.stdout, done.stdout
    assert done.stderr.splitlines()[-1] == "2 done, 0 up-to-date, 0 failed", done.stderr[-4000:]
    assert "Traceback" not in done.stderr and "NoneType: None" not in done.stderr
    assert f"report: {on_slurm / 'report.html'}" in done.stdout
    assert (on_slurm / "cohort.csv").read_text().count("\n") == 3  # header + a + b
    # the same batch again: every slide up to date, so no job is submitted at all
    again = subprocess.run(recipe, cwd=tmp_path, env=slurm, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.splitlines()[-1] == "0 done, 2 up-to-date, 0 failed", again.stderr
    assert log_file.read_text().count("_slurm_rpc_submit_batch_job: JobId=") == submitted

    local = tmp_path / "local-out"
    wsi_segment = Path(sys.executable).parent / "wsi-segment"
    here = subprocess.run(
        [str(wsi_segment), "batch", str(slides), "--out", str(local), "--model", str(tiny_model)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert here.returncode == 0, here.stderr[-4000:]
    for name in ("a", "b"):
        assert output_files(on_slurm / name) == output_files(local / name), name


def test_a_worker_job_cancelled_mid_run_is_replaced_and_the_batch_finishes(
    slurm: dict[str, str], tiny_model: Path, tmp_path: Path
) -> None:
    """`scancel` of the one worker job while a slide is being written: the recipe keeps its
    number of jobs (adaptive, minimum = maximum = --jobs), so a new job starts, the lost
    chunks run there, and every slide finishes in this same run, nothing hidden left."""
    import time

    slides = tmp_path / "slides"
    slides.mkdir()
    names = [f"s{i}" for i in range(4)]
    for i, name in enumerate(names):
        write_synthetic_slide(slides / f"{name}.tif", (3072, 2048), seed=30 + i)
    out = tmp_path / "out"
    argv = [
        sys.executable, str(RECIPE), str(slides), "--out", str(out), "--model", str(tiny_model),
        "--gpus", "0", "--cores", "2", "--memory", "2GiB", "--jobs", "1",
        "--walltime", "00:20:00", "--concurrency", "1", "--shared-temp-directory", str(tmp_path),
    ]  # fmt: skip
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=slurm, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 600
            while not any(out.glob(".*.partial")) and proc.poll() is None:
                assert time.monotonic() < deadline, "no slide was ever being written"
                time.sleep(0.1)
            subprocess.run(["scancel", "-u", "root"], env=slurm, check=True)
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "run.log").read_text(errors="replace")
    assert code == 0, text[-4000:]
    assert "4 done, 0 up-to-date, 0 failed" in text.splitlines(), text[-4000:]
    assert without_report(sorted(p.name for p in out.iterdir())) == names
    log = (Path(slurm["SLURM_CONF"]).parent / "slurmctld.log").read_text()
    assert log.count("_slurm_rpc_submit_batch_job: JobId=") >= 2  # the replacement job
