"""`wsi-segment batch` as a scheduler and a person at a terminal meet it: Ctrl-C and SIGTERM
mid-slide, a slide over its time limit, and failed slides reported one line each.

Real subprocesses of the CLI over real slides: a small synthetic slide that finishes, and
copies of the CMU slide slowed down (one tile per forward pass, one thread) so that a signal
or a time limit lands while a slide is in inference. Chunks run on the default local Dask
cluster (worker processes), so "nothing left behind" covers its processes too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import CMU_SLIDE, corrupt_middle_tile, foreground_signals, without_report
from tests.flows.conftest import write_synthetic_slide
from tests.reliability.conftest import CLI, REPO, cli_env, leftovers
from tests.reliability.test_interruption import SLOW, our_shared_memory


def batch_cmd(folder: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [*CLI, "batch", str(folder), "--model", str(model), "--out", str(out), *extra]


def table_statuses(stdout: str) -> dict[str, str]:
    """Slide file name -> status, from the markdown table the batch prints."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0].startswith("/"):
            rows[Path(cells[0]).name] = cells[1]
    return rows


def slow_folder(tmp_path: Path) -> Path:
    """a-small finishes in seconds; b-cmu and c-cmu (the CMU slide, slowed) take minutes."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_synthetic_slide(folder / "a-small.tif", (512, 384), seed=1)
    shutil.copy2(CMU_SLIDE, folder / "b-cmu.svs")
    shutil.copy2(CMU_SLIDE, folder / "c-cmu.svs")
    return folder


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_for_chunks(proc: subprocess.Popen[str], partial: Path, timeout: float = 400) -> None:
    """Return once the slide at `partial` has written probability chunks (it is mid-inference)."""
    chunks = partial / "probabilities.ome.zarr" / "0" / "0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if chunks.exists() and len([p for p in chunks.rglob("*") if p.is_file()]) >= 2:
            return
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    pytest.fail("the batch never reached the slow slide's inference")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [
        (signal.SIGINT, 130, "error: interrupted"),
        (signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_before_the_first_slide_stops_the_batch_as_one_mid_slide_does(
    tiny_model_dir: Path, tmp_path: Path, sig: signal.Signals, code: int, line: str
) -> None:
    """Sent as soon as the batch has read its input (it then checks which slides are up to
    date and starts its local cluster, seconds before a slide can start): the exit status
    and the one `error:` line of a stop mid-slide, no traceback, no slide started, no
    process left. SIGTERM used to escape as Prefect's `TerminationSignal`: a traceback and
    exit status 1."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_synthetic_slide(folder / "a.tif", (512, 384), seed=1)
    cmd = batch_cmd(folder, tiny_model_dir, out, "--workers", "1")
    with foreground_signals():
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for output_line in proc.stdout:  # the flow's log: "1 slide(s) from IN -> OUT"
        seen.append(output_line)
        if " slide(s) from " in output_line:
            break
    else:
        pytest.fail("the batch ended before it logged its input:\n" + "".join(seen))
    rest: list[str] = []  # read meanwhile: a full pipe would hold the batch
    reader = threading.Thread(target=lambda: rest.append(proc.stdout.read()), daemon=True)
    reader.start()
    proc.send_signal(sig)
    children = watched_until_exit(proc, 120)  # the Prefect server, any Dask process started
    reader.join(timeout=60)  # the server holds the pipe until it ends, after the batch
    output = "".join(seen + rest)
    assert proc.returncode == code, output[-3000:]
    assert [ln for ln in output.splitlines() if ln.startswith("error:")] == [line], output
    assert "Traceback" not in output, output[-3000:]
    assert table_statuses(output) == {}, output  # a stop before any slide: no table
    assert leftovers(out) == [], output[-3000:]  # nothing written
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("sig", "where"),
    [
        (signal.SIGINT, ["--workers", "1"]),
        (signal.SIGTERM, ["--workers", "1"]),
        (signal.SIGTERM, ["--workers", "0", "--decoders", "1"]),
    ],
    ids=["SIGINT-dask", "SIGTERM-dask", "SIGTERM-engine"],
)
def test_interrupting_a_batch_stops_it_cleans_up_and_reports(
    tiny_model_dir: Path, tmp_path: Path, sig: signal.Signals, where: list[str]
) -> None:
    """Mid-inference of the second slide: exit within seconds, 130 (SIGTERM: 143) with one
    `error:` line; the table shows the finished slide, the one cut off and the one never
    started; only the finished slide's folder is left (no partial folder, no lock); no
    process of the batch (Dask nannies and workers; with `--workers 0 --decoders 1` the
    engine's decoder process) outlives it, and no shared memory of its decoders is
    left. A second Ctrl-C during the cleanup changes nothing (no Prefect "Crash detected!",
    same exit)."""
    folder, out = slow_folder(tmp_path), tmp_path / "out"
    cmd = batch_cmd(
        folder, tiny_model_dir, out, "--mpp", "0.5", "--concurrency", "1", *SLOW, *where
    )
    with foreground_signals():
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    wait_for_chunks(proc, out / ".b-cmu.partial")
    children = descendants(proc.pid)
    assert children  # the Dask nanny and worker, or the decoder
    t0 = time.monotonic()
    proc.send_signal(sig)
    if sig == signal.SIGINT:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # impatient second Ctrl-C
    stdout, stderr = proc.communicate(timeout=300)
    took = time.monotonic() - t0
    code, line = (
        (130, "error: interrupted")
        if sig == signal.SIGINT
        else (143, "error: terminated (SIGTERM)")
    )
    assert proc.returncode == code, stderr[-3000:]
    assert took < 45, took  # the Dask cluster's shutdown is most of it
    assert [ln for ln in stderr.splitlines() if ln.startswith("error:")] == [line], stderr
    assert "Traceback" not in stderr and "Crash detected" not in stderr, stderr[-3000:]
    assert table_statuses(stdout) == {
        "a-small.tif": "done",
        "b-cmu.svs": "interrupted",
        "c-cmu.svs": "not started",
    }, stdout
    assert without_report(leftovers(out)) == ["a-small"]
    assert (out / "a-small" / "summary.json").is_file()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
    assert "leaked" not in stderr, stderr[-3000:]  # the resource tracker's warnings
    assert our_shared_memory(proc.pid) == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_slide_over_its_time_limit_fails_and_the_batch_goes_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`--slide-timeout`: the CMU slide read as if at 2 um/px (a manifest's mpp: 16 times the
    tiles) runs past 30 s; it is stopped, marked failed "timed out after 30 s" with one
    `error:` line, its partial folder and lock are removed, and the slide after it finishes."""
    folder = tmp_path / "in"
    folder.mkdir()
    small = write_synthetic_slide(folder / "small.tif", (512, 384), seed=1)
    manifest = tmp_path / "batch.csv"
    manifest.write_text(f"slide,mpp,name\n{CMU_SLIDE},2.0,cmu\n{small},1.0,small\n")
    out = tmp_path / "out"
    cmd = [*batch_cmd(manifest, tiny_model_dir, out, "--concurrency", "1"), *SLOW]
    done = subprocess.run(
        [*cmd, "--slide-timeout", "30"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: {CMU_SLIDE}: timed out after 30 s (the batch's slide time limit); its "
        "partial outputs were removed; run it again with a longer --slide-timeout"
    ], done.stderr[-3000:]
    assert table_statuses(done.stdout) == {CMU_SLIDE.name: "failed (new)", "small.tif": "done"}
    seconds = re.search(
        rf"\| {re.escape(str(CMU_SLIDE))} \| failed \(new\) .*\| ([0-9.]+) \| ", done.stdout
    )
    assert seconds and 30 <= float(seconds.group(1)) < 45, done.stdout  # stopped promptly
    assert without_report(leftovers(out)) == [
        "small"
    ]  # a time limit is not a known failure: no record


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_failed_slide_is_one_line_on_stderr(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An unreadable file and a slide with a damaged tile next to a good slide: stderr names
    each failed slide on one `error:` line and nowhere else, with no traceback (Prefect's
    task and flow failure records stay in the Prefect log)."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_synthetic_slide(folder / "good.tif", (512, 384), seed=1)
    (folder / "unreadable.svs").write_bytes(b"this is not a slide")
    corrupt_middle_tile(CMU_SLIDE, folder / "damaged.svs")
    out = tmp_path / "out"
    cmd = batch_cmd(folder, tiny_model_dir, out, "--mpp", "0.5", "--precision", "fp32")
    done = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=500)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    for name in ("unreadable.svs", "damaged.svs"):
        naming = [ln for ln in lines if name in ln]
        assert len(naming) == 1 and naming[0].startswith(f"error: {folder / name}: "), lines
    assert len([ln for ln in lines if ln.startswith("error:")]) == 2, lines
    assert not [ln for ln in lines if "ERROR" in ln], lines
    assert table_statuses(done.stdout) == {
        "damaged.svs": "failed (new)",
        "good.tif": "done",
        "unreadable.svs": "failed (new)",
    }
    # both errors recur: each is written down (pipeline.known_failures), nothing else is left
    assert without_report(leftovers(out)) == [
        ".damaged.failed.json",
        ".unreadable.failed.json",
        "good",
    ]
    assert os.path.isfile(out / "good" / "summary.json")


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "inf"])
def test_a_bad_slide_timeout_is_a_usage_error(value: str, tmp_path: Path, capsys) -> None:
    from tests.reliability.conftest import assert_usage_error, run_cli_inprocess

    result = run_cli_inprocess(
        ["batch", str(CMU_SLIDE), "--out", str(tmp_path / "out"), "--slide-timeout", value],
        capsys,
    )
    assert_usage_error(result, "--slide-timeout")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_the_flow_refuses_a_bad_slide_timeout(value: float, tmp_path: Path) -> None:
    from wsi_segment.errors import ConfigError
    from wsi_segment.flows.batch_flow import segment_batch

    with pytest.raises(ConfigError, match="slide_timeout must be > 0"):
        segment_batch.fn(input=str(CMU_SLIDE), out=str(tmp_path), slide_timeout=value)


# The CLI with one fault injected: the slide whose file name holds "stuck" blocks in a read
# from a pipe nobody writes to, in the kernel, where no check of the slide's cancellation token
# comes (a hung network file system, a driver call). The grace is cut to 5 s.
STUCK_CLI = """
import faulthandler, os, signal, sys
from pathlib import Path
faulthandler.register(signal.SIGUSR2, all_threads=True)  # signal_and_wait's dump of a hang
from wsi_segment.flows import batch_flow, batch_interrupt
batch_interrupt.GRACE_S = 5.0
real = batch_flow.run_slide_stages
def run_slide_stages(slide, *args):
    if "stuck" in Path(slide).name:
        r, w = os.pipe()
        Path(os.environ["STUCK_MARKER"]).touch()
        os.read(r, 1)
    return real(slide, *args)
batch_flow.run_slide_stages = run_slide_stages
from wsi_segment.flows.cli import main
sys.exit(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_slide_stuck_past_the_grace_does_not_keep_the_batch_from_exiting(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM while a slide's thread is blocked in a system call: the batch waits the grace
    (5 s here) for it, then prints the table (the stuck slide "interrupted") and exits 143
    with one `error:` line, instead of waiting for that thread for ever."""
    folder, out, marker = tmp_path / "in", tmp_path / "out", tmp_path / "stuck-now"
    folder.mkdir()
    write_synthetic_slide(folder / "a-small.tif", (512, 384), seed=1)
    write_synthetic_slide(folder / "b-stuck.tif", (512, 384), seed=2)
    cmd = [sys.executable, "-c", STUCK_CLI, "batch", str(folder), "--model", str(tiny_model_dir),
           "--out", str(out), "--mpp", "0.5", "--concurrency", "1", "--workers", "0", "--quiet"]  # fmt: skip
    env = {**cli_env(), "STUCK_MARKER": str(marker)}
    with foreground_signals():
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    deadline = time.monotonic() + 200
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = descendants(proc.pid)  # the Prefect server: it holds stdout too
    if not marker.exists():
        kill_all(proc, children)
        pytest.fail(f"the batch never reached its stuck slide: {proc.communicate()[1][-3000:]}")
    stdout, stderr, took = signal_and_wait(
        lambda: proc.send_signal(signal.SIGTERM), proc, children, 60,
        "the batch waited for its stuck slide past the grace",
    )  # fmt: skip
    assert proc.returncode == 143, stderr[-3000:]
    assert 5 <= took < 25, took  # the grace, then the table and the Prefect server's exit
    assert [ln for ln in stderr.splitlines() if ln.startswith("error:")] == [
        "error: terminated (SIGTERM)"
    ], stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "b-stuck.tif: still running 5 s after the interrupt" in stderr, stderr[-3000:]
    assert table_statuses(stdout) == {"a-small.tif": "done", "b-stuck.tif": "interrupted"}, stdout
    assert without_report(leftovers(out)) == ["a-small"]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive


def watched_until_exit(proc: subprocess.Popen[str], timeout: float) -> list[psutil.Process]:
    """Every process `proc` started while it ran (looked for every 0.1 s until it exits;
    past `timeout` it and they are killed and the test fails)."""
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        seen.update((child.pid, child) for child in descendants(proc.pid))
        if time.monotonic() > deadline:
            kill_all(proc, list(seen.values()))
            pytest.fail(f"the batch did not exit {timeout:g} s after its signal")
        time.sleep(0.1)
    return list(seen.values())


def signal_and_wait(
    send: Callable[[], None],
    proc: subprocess.Popen[str],
    children: list[psutil.Process],
    timeout: float,
    failure: str,
) -> tuple[str, str, float]:
    """(stdout, stderr, seconds to exit) of `proc` after `send()` signals it; past `timeout`
    the batch and its `children` are killed and the test fails with `failure` and the end of
    its output (after SIGUSR2: a batch that registered faulthandler on it, STUCK_CLI, dumps
    every thread's stack there)."""
    t0 = time.monotonic()
    send()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR2)  # where it hangs, if it dumps its stacks on it
        time.sleep(2)
        kill_all(proc, children)
        stdout, stderr = proc.communicate(timeout=30)  # every stack: keep a long tail
        pytest.fail(
            f"{failure}; its stdout ends:\n{stdout[-2000:]}\nits stderr ends:\n{stderr[-20000:]}"
        )
    return stdout, stderr, time.monotonic() - t0


def kill_all(proc: subprocess.Popen[str], children: list[psutil.Process]) -> None:
    """SIGKILL the batch and the processes it started (a hung test leaves nothing behind)."""
    proc.kill()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("sig", "where", "code", "line"),
    [
        (signal.SIGINT, ["--workers", "1"], 130, "error: interrupted"),
        (signal.SIGTERM, ["--workers", "0", "--decoders", "1"], 143, "error: terminated (SIGTERM)"),
        (signal.SIGHUP, ["--workers", "1"], 129, "error: terminated (SIGHUP)"),
    ],
    ids=["SIGINT-dask", "SIGTERM-engine", "SIGHUP-dask"],
)
def test_a_signal_to_the_batchs_process_group_stops_it_in_seconds(
    tiny_model_dir: Path, tmp_path: Path, sig: signal.Signals, where: list[str], code: int,
    line: str,
) -> None:  # fmt: skip
    """Ctrl-C in a terminal, SLURM, Kubernetes and a dropped ssh session signal the whole
    process group (here with a local Dask cluster, and with the engine in the batch's
    process). The batch stops within seconds as when it alone is signalled: the table on
    stdout, one `error:` line and nothing else on stderr (`--quiet`: no Dask worker
    traceback; the nanny may warn that it killed a worker busy with a chunk), nothing
    partial, no process left."""
    folder, out = slow_folder(tmp_path), tmp_path / "out"
    cmd = batch_cmd(
        folder, tiny_model_dir, out, "--mpp", "0.5", "--concurrency", "1", *SLOW, *where
    )
    with foreground_signals():
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    wait_for_chunks(proc, out / ".b-cmu.partial")
    children = descendants(proc.pid)
    stdout, stderr, took = signal_and_wait(
        lambda: os.killpg(proc.pid, sig), proc, children, 120,
        "the batch did not stop within 120 s of the group's signal",
    )  # fmt: skip
    assert proc.returncode == code, stderr[-3000:]
    assert took < 30, took
    warning = f"warning: {folder / 'a-small.tif'}: no tissue found"
    nanny = "| WARNING | distributed.nanny - Worker process still alive after"  # a busy worker
    lines = [ln for ln in stderr.splitlines() if not ln.startswith(warning) and nanny not in ln]
    assert lines == ["1 done, 0 up-to-date, 0 failed, 1 interrupted, 1 not started", line], stderr
    assert table_statuses(stdout) == {
        "a-small.tif": "done",
        "b-cmu.svs": "interrupted",
        "c-cmu.svs": "not started",
    }, stdout
    assert without_report(leftovers(out)) == ["a-small"]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_batch_under_timeout_stops_when_it_fires(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`timeout -s TERM 60 wsi-segment batch ...`: when it fires (while the slowed slides
    run) the batch ends within seconds, 143 (`--preserve-status`), with its table. The CMU
    slides are read at the tiny model's own 2 um/px (`--mpp 2.0`: no downsampling, ~45 s
    each here), so the timeout finds one of them running on a machine twice as fast too."""
    folder, out = slow_folder(tmp_path), tmp_path / "out"
    cmd = batch_cmd(folder, tiny_model_dir, out, "--mpp", "2.0", "--concurrency", "1", *SLOW)
    t0 = time.monotonic()
    done = subprocess.run(["timeout", "--preserve-status", "-s", "TERM", "60", *cmd], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    took = time.monotonic() - t0
    assert done.returncode == 143, done.stderr[-3000:]
    assert 60 <= took < 90, took
    assert "error: terminated (SIGTERM)" in done.stderr.splitlines(), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    statuses = table_statuses(done.stdout)
    assert set(statuses) == {"a-small.tif", "b-cmu.svs", "c-cmu.svs"}, done.stdout
    assert statuses["c-cmu.svs"] in ("not started", "interrupted"), statuses
    assert not [name for name in leftovers(out) if name.endswith((".partial", ".lock"))]
