"""A run killed mid-slide leaves nothing that looks finished; the next run completes it and
its outputs equal an uninterrupted run's.

The SIGKILL test uses a real `wsi-segment` subprocess on the CMU slide with the tiny model,
one tile per forward pass and one thread so inference lasts long enough to be killed while
the zarr store is being filled. It is slow (three full runs), hence @slow; the fast test
reproduces what a killed run leaves behind (stale partial folder, unlocked lock file).
A killed process cannot clean up: its hidden `.NAME.partial` and empty `.NAME.lock` may stay
until the next run, which removes both.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from tests.conftest import CMU_SLIDE, foreground_signals
from tests.reliability.conftest import (
    CLI,
    REPO,
    assert_complete_output,
    cli_env,
    leftovers,
    run_cli,
    run_cli_inprocess,
)

STEM = CMU_SLIDE.stem
# The killed run is slowed down (one tile per forward pass, one thread); batch size and
# threads change speed only (not the run's fingerprint), so the rerun and the reference
# use the defaults. fp32 everywhere so outputs compare exactly.
# slowed so that a signal finds them mid-run: one tile a batch on one thread, in torch (a
# compiled runtime ran the slowed slides of a batch to the end before `timeout 90` fired)
SLOW = [
    "--batch-size",
    "1",
    "--threads",
    "1",
    "--runtime",
    "torch",
    "--precision",
    "fp32",
    "--quiet",
]
OPTIONS = ["--precision", "fp32", "--quiet"]
# what a killed run may leave: hidden, never looking finished; the next run removes them
KILLED_LEFTOVERS = {f".{STEM}.partial", f".{STEM}.lock"}
TERMINATED = "error: terminated (SIGTERM)"


def zarr_level0(out_dir):
    return np.asarray(zarr.open_group(str(out_dir / "probabilities.ome.zarr"), mode="r")["0/0"][:])


def class_areas(out_dir):
    summary = json.loads((out_dir / "summary.json").read_text())
    return {name: c["area_um2"] for name, c in summary["classes"].items()}


def test_leftovers_of_a_killed_run_are_cleaned_by_the_next(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    partial = out / f".{cmu_crop.stem}.partial"
    (partial / "probabilities.ome.zarr" / "0" / "0").mkdir(parents=True)
    (partial / "probabilities.ome.zarr" / "0" / "junk").write_bytes(b"half a chunk")
    (out / f".{cmu_crop.stem}.lock").touch()  # the dead run's lock file, no longer locked
    args = [cmu_crop, "--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    result = run_cli_inprocess(args, capsys)
    assert result.code == 0, result.stderr
    assert_complete_output(out / cmu_crop.stem)
    assert leftovers(out) == [cmu_crop.stem]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_mid_slide_then_rerun_equals_uninterrupted(tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [*CLI, str(CMU_SLIDE), "--model", str(tiny_model_dir), "--out", str(out), *SLOW]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    chunks = out / f".{STEM}.partial" / "probabilities.ome.zarr" / "0" / "0"
    deadline = time.monotonic() + 400
    try:
        # wait until inference has written some (not all) probability chunks
        while time.monotonic() < deadline and proc.poll() is None:
            written = [p for p in chunks.rglob("*") if p.is_file()] if chunks.exists() else []
            if len(written) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline, "inference never started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # nothing that looks finished: no final folder, only the hidden partial folder + lock
    assert not (out / STEM).exists()
    assert not list(out.rglob("summary.json"))
    assert set(leftovers(out)) <= KILLED_LEFTOVERS

    rerun = run_cli([CMU_SLIDE, "--model", tiny_model_dir, "--out", out, *OPTIONS])
    assert rerun.code == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert_complete_output(out / STEM)
    assert leftovers(out) == [STEM]

    ref_out = tmp_path / "reference"
    ref = run_cli([CMU_SLIDE, "--model", tiny_model_dir, "--out", ref_out, *OPTIONS])
    assert ref.code == 0, ref.stderr
    np.testing.assert_array_equal(zarr_level0(out / STEM), zarr_level0(ref_out / STEM))
    assert class_areas(out / STEM) == class_areas(ref_out / STEM)
    a = json.loads((out / STEM / "tissue.geojson").read_text())
    b = json.loads((ref_out / STEM / "tissue.geojson").read_text())
    assert [f["geometry"] for f in a["features"]] == [f["geometry"] for f in b["features"]]


def start_slowed_run(tiny_model_dir, out, extra=(), new_session=False) -> subprocess.Popen:
    """A slowed-down real run of the CLI on CMU-1-Small-Region, started as from a terminal:
    with the stopping signals' default actions even where this test process ignores SIGINT
    or SIGHUP (a shell's background job, `nohup`: the CLI would inherit that and, as it
    should, never see the test's signal)."""
    cmd = [*CLI, str(CMU_SLIDE), "--model", str(tiny_model_dir), "--out", str(out), *SLOW]
    with foreground_signals():
        return subprocess.Popen(
            [*cmd, *extra],
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )


def start_and_wait_for_chunks(tiny_model_dir, out, extra=(), new_session=False):
    """A slowed-down real run, returned once it has written some probability chunks."""
    proc = start_slowed_run(tiny_model_dir, out, extra, new_session)
    chunks = out / f".{STEM}.partial" / "probabilities.ome.zarr" / "0" / "0"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if chunks.exists() and len([p for p in chunks.rglob("*") if p.is_file()]) >= 2:
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    pytest.fail("the run never reached inference, or finished before it could be interrupted")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_or_terminate_mid_slide(tiny_model_dir, tmp_path, sig):
    """Ctrl-C: `error: interrupted`, exit 130; SIGTERM (what a scheduler sends first): the
    same cleanup, `error: terminated (SIGTERM)`, exit 143. The partial folder and the lock
    are removed, and the next run completes."""
    out = tmp_path / "out"
    proc = start_and_wait_for_chunks(tiny_model_dir, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    assert not (out / STEM).exists()
    assert not list(out.rglob("summary.json"))
    code, line = (130, "error: interrupted") if sig == signal.SIGINT else (143, TERMINATED)
    assert proc.returncode == code, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [line]
    assert leftovers(out) == []
    rerun = run_cli([CMU_SLIDE, "--model", tiny_model_dir, "--out", out, *OPTIONS])
    assert rerun.code == 0, rerun.stderr
    assert_complete_output(out / STEM)
    assert leftovers(out) == [STEM]


def our_shared_memory(pid: int) -> list[str]:
    """Entries in /dev/shm that a process made (slot rings are named after its pid)."""
    from wsi_segment.pipeline.inference.shm_rings import SHM_DIR, SHM_PREFIX

    shm = Path(SHM_DIR)
    return sorted(p.name for p in shm.glob(f"{SHM_PREFIX}{pid}_*")) if shm.is_dir() else []


def assert_terminated_cleanly(proc: subprocess.Popen, out: Path) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [TERMINATED], err
    assert "Traceback" not in err and "leaked" not in err, err  # resource_tracker warnings
    assert leftovers(out) == []  # no partial folder, no lock
    assert our_shared_memory(proc.pid) == []


@pytest.mark.timeout(600)
def test_sigterm_with_decoder_processes_cleans_up_like_ctrl_c(tiny_model_dir, tmp_path):
    """SIGTERM to the CLI alone (Docker, Kubernetes) while a decoder process fills shared
    memory: one `error:` line, exit 143, nothing left on disk or in /dev/shm."""
    out = tmp_path / "out"
    proc = start_and_wait_for_chunks(tiny_model_dir, out, ["--decoders", "1"])
    assert our_shared_memory(proc.pid)  # the slot ring exists while it runs
    proc.send_signal(signal.SIGTERM)
    assert_terminated_cleanly(proc, out)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_the_process_group_cleans_up_like_ctrl_c(tiny_model_dir, tmp_path):
    """`timeout` signals the whole process group: the decoders get SIGTERM too and end
    quietly, and the CLI cleans up as when it alone is signalled."""
    out = tmp_path / "out"
    proc = start_and_wait_for_chunks(tiny_model_dir, out, ["--decoders", "1"], new_session=True)
    os.killpg(proc.pid, signal.SIGTERM)
    assert_terminated_cleanly(proc, out)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_decoder_killed_mid_slide_is_one_error_and_the_rerun_equals_uninterrupted(
    tiny_model_dir, tmp_path
):
    """The OOM killer takes one decoder process: the run fails with one `error:` line that
    says so (no traceback), leaves nothing on disk or in /dev/shm, and the rerun's outputs
    equal an uninterrupted run's with the same decoders."""
    out = tmp_path / "out"
    decoders = ["--decoders", "1"]
    proc = start_and_wait_for_chunks(tiny_model_dir, out, decoders)
    (decoder,) = [p for p in psutil.Process(proc.pid).children() if "resource_tracker" not in
                  " ".join(p.cmdline())]  # fmt: skip
    decoder.kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "a decoder process died" in errors[0], err
    assert "Traceback" not in err and "leaked" not in err, err
    assert leftovers(out) == []
    assert our_shared_memory(proc.pid) == []

    args = [CMU_SLIDE, "--model", tiny_model_dir, *OPTIONS, *decoders]
    rerun = run_cli([*args, "--out", out])
    assert rerun.code == 0, rerun.stderr
    assert_complete_output(out / STEM)
    ref = run_cli([*args, "--out", tmp_path / "reference"])
    assert ref.code == 0, ref.stderr
    np.testing.assert_array_equal(
        zarr_level0(out / STEM), zarr_level0(tmp_path / "reference" / STEM)
    )
    assert class_areas(out / STEM) == class_areas(tmp_path / "reference" / STEM)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "sig",
    # Ctrl-C's path differs from SIGTERM's only in the exception its handler raises
    # (`errors.signal_exception`; tests/flows/test_signal_stop.py) and the exit code: the fast
    # suite runs one
    [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_to_the_group_with_polygon_processes_cleans_up_and_ends_them(
    tiny_model_dir, tmp_path, sig
):
    """A terminal's Ctrl-C or `timeout`'s SIGTERM to the run's process group: the polygon
    processes (a group of their own) never see it, and the run cleans up as always (exit 130
    or 143, one `error:` line, nothing on disk) and ends them."""
    out = tmp_path / "out"
    # the slide read as 4x coarser (12x the tiles), signalled as soon as the engine has
    # started the workers (not once chunks are written: on a loaded CI machine this test's
    # process was starved until the run had ended, and the signal came too late)
    extra = ["--polygon-processes", "2", "--decoders", "0", "--mpp", "2.0"]
    proc = start_slowed_run(tiny_model_dir, out, extra, new_session=True)
    workers: list[psutil.Process] = []
    deadline = time.monotonic() + 400
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the engine starts them once the model has loaded
        with contextlib.suppress(psutil.Error):  # a child that ended between the two calls
            workers = [p for p in psutil.Process(proc.pid).children() if "resource_tracker"
                       not in " ".join(p.cmdline())]  # fmt: skip
    assert len(workers) == 2, proc.communicate()
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    code, line = (130, "error: interrupted") if sig == signal.SIGINT else (143, TERMINATED)
    assert proc.returncode == code, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [line]
    assert "Traceback" not in err, err
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive
    assert leftovers(out) == []


@pytest.mark.timeout(300)
def test_a_run_under_nohup_outlives_its_terminal(tiny_model_dir, tmp_path):
    """`nohup wsi-segment SLIDE &`, then the terminal closes: SIGHUP to the run and its
    decoder process while they work is ignored, as nohup asked, and the run completes
    (before, the CLI's handlers took SIGHUP back and the run ended with exit 129)."""
    out = tmp_path / "out"
    cmd = [*CLI, str(CMU_SLIDE), "--model", str(tiny_model_dir), "--out", str(out)]
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does before exec
    try:
        proc = subprocess.Popen(
            [*cmd, *OPTIONS, "--decoders", "1"],
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGHUP, previous)
    partial = out / f".{STEM}.partial"  # made once the handlers are in place, before inference
    deadline = time.monotonic() + 120
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its terminal closed"
    hung_up = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in hung_up:  # the terminal's hangup reaches its whole foreground group
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert len(hung_up) >= 2, "no decoder process was running to be hung up"
    assert_complete_output(out / STEM)
    assert leftovers(out) == [STEM]
