"""A local cluster's worker that ran a band ends within its nanny's close timeout, so a
batch's close prints no "Worker process still alive after 4.0 seconds, killing"
(`flows.worker_exit`); and a real `wsi-segment batch --quiet` prints its tally alone on
stderr, also when its process is held mid-band as a loaded machine holds it
(`flows.batch_console.abandoned_handshake`)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import CMU_SLIDE
from tests.flows.conftest import write_synthetic_slide
from tests.flows.slow_close import SLOW_CLOSE_S, SlowClose
from tests.pipeline.inference.test_band_runner import (
    band_job_over,
    band_options,
    cluster_plan,
    corner_tissue,
)
from tests.reliability.conftest import CLI, cli_env, run_cli
from wsi_segment.pipeline.inference.band_runner import run_bands


class Records(logging.Handler):
    """Every record of one logger, whatever its propagation (Dask's loggers keep theirs)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _worker_state() -> tuple[int, int]:
    """This worker's pid, and how many modules it has imported by now."""
    import sys

    return os.getpid(), len(sys.modules)


def test_a_worker_that_ran_a_band_ends_when_its_cluster_closes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from wsi_segment.flows.dask_cluster import dask_client

    nanny = logging.getLogger("distributed.nanny")
    records = Records()
    with dask_client(workers=1, threads=1) as client:
        # a band over the CMU slide's tissue where four write units meet (23 tiles)
        job, specs = band_job_over(tmp_path / "p.zarr", tiny_model_dir, CMU_SLIDE, corner_tissue())
        assert run_bands(job, specs, client, cluster_plan(band_options()), bands=1)
        [(pid, modules)] = client.run(_worker_state).values()
        assert modules > 2000  # torch, timm, the model's runtime: the heap a band leaves
        nanny.addHandler(records)
        t0 = time.monotonic()
    closed_s = time.monotonic() - t0
    nanny.removeHandler(records)
    assert not [line for line in records.lines if "still alive" in line], records.lines
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert closed_s < 4.0  # what a cluster's own close lets a nanny wait, never needed here


def test_a_worker_slow_to_close_is_waited_for_not_killed() -> None:
    """At the end of a run the nanny waits for a worker slower than its default 4 s (the
    bound `close_workers` gives it): no "still alive ... killing" line, and the worker's
    close was waited for whole."""
    from wsi_segment.flows.dask_cluster import dask_client

    nanny = logging.getLogger("distributed.nanny")
    records = Records()
    with dask_client(workers=1, threads=1) as client:
        client.register_plugin(SlowClose())
        [pid] = client.run(os.getpid).values()
        nanny.addHandler(records)
        t0 = time.monotonic()
    closed_s = time.monotonic() - t0
    nanny.removeHandler(records)
    assert not [line for line in records.lines if "still alive" in line], records.lines
    assert closed_s >= SLOW_CLOSE_S
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_cluster_left_on_an_interrupt_keeps_the_prompt_bound() -> None:
    """Left on an interrupt, the cluster closes with Dask's own bound: a slow worker is
    killed after 4 s rather than waited for (a stop stays prompt)."""
    from wsi_segment.flows.dask_cluster import dask_client

    nanny = logging.getLogger("distributed.nanny")
    records = Records()
    with pytest.raises(KeyboardInterrupt), dask_client(workers=1, threads=1) as client:
        client.register_plugin(SlowClose())
        [pid] = client.run(os.getpid).values()
        nanny.addHandler(records)
        raise KeyboardInterrupt
    nanny.removeHandler(records)
    assert "Worker process still alive after 4.0 seconds, killing" in records.lines
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow  # three real batches: a Prefect server, a cluster and torch each time
@pytest.mark.timeout(900)
def test_a_quiet_batch_prints_its_tally_alone_on_stderr(tmp_path: Path, tiny_model: Path) -> None:
    """Two small slides on the default local cluster, three times: exit 0, the table on
    stdout, and on stderr the tally alone (no nanny "killing" line, no Dask or Prefect
    chatter)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    write_synthetic_slide(slides / "a.svs", (600, 500), seed=1)
    write_synthetic_slide(slides / "b.svs", (500, 600), seed=2)
    for run in range(3):
        out = tmp_path / f"out{run}"
        result = run_cli(
            ["batch", slides, "--model", tiny_model, "--out", out, "--quiet", "--workers", "1"]
        )
        assert result.code == 0, result.stderr
        assert result.stderr.splitlines() == ["2 done, 0 up-to-date, 0 failed"], (
            f"run {run}: {result.stderr}"
        )
        assert "| done |" in result.stdout
        shutil.rmtree(out)


HELD_S = 10  # past the 6 s Dask's connect gives its first attempt (a fifth of 30 s)


def first_chunk_written(out: Path, proc: subprocess.Popen[str]) -> bool:
    """Wait until a slide's band has written a zarr chunk into its partial folder (the band
    is running), or the batch has ended; True in the first case."""
    while proc.poll() is None:
        for partial in out.glob(".*.partial"):
            zarr = partial / "probabilities.ome.zarr"
            if any(p.name.isdigit() and p.is_file() for p in zarr.rglob("*")):
                return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # a real batch with a slide of ~1,500 tiles, held 10 s
@pytest.mark.timeout(900)
def test_a_quiet_batch_held_mid_band_prints_its_tally_alone(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The batch's process (scheduler, nanny, flow) stopped for 10 s while a band runs, as a
    loaded machine can hold it: the worker's client gives up its first handshake with the
    scheduler and connects again, the batch finishes its slide, and stderr is still the
    tally alone (Dask's warning of the handshake it gave up is not printed)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    write_synthetic_slide(slides / "big.svs", (3000, 3000), seed=3)
    out = tmp_path / "out"
    args = ["batch", slides, "--model", tiny_model, "--out", out, "--quiet", "--mpp", "4"]
    args += ["--workers", "1"]  # a local cluster, which is what this is about
    proc = subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert first_chunk_written(out, proc), proc.communicate()
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(HELD_S)
        os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stderr.splitlines() == ["1 done, 0 up-to-date, 0 failed"], stderr
    assert "| done |" in stdout
