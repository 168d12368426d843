"""Two runs on the same slide and output folder never corrupt each other: the second
refuses clearly while the first holds the lock (or finds the outputs up to date)."""

from __future__ import annotations

import fcntl
import os
import subprocess

import pytest

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import (
    CLI,
    REPO,
    assert_clean_error,
    assert_complete_output,
    cli_env,
    leftovers,
    run_cli_inprocess,
)


def test_second_run_refuses_while_the_first_holds_the_lock(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / f".{cmu_crop.stem}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    args = [cmu_crop, "--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "the first run"
        result = run_cli_inprocess(args, capsys)
        assert_clean_error(result, cmu_crop.stem, "another wsi-segment run", "--out")
        # nothing of its own, and the first run's lock file is left alone (still held)
        assert leftovers(out) == [f".{cmu_crop.stem}.lock"]
    finally:
        os.close(fd)  # the first run dies without cleaning up, as a killed run does
    result = run_cli_inprocess(args, capsys)  # the first run is gone: this one works
    assert result.code == 0, result.stderr
    assert_complete_output(out / cmu_crop.stem)
    assert leftovers(out) == [cmu_crop.stem]  # and takes the stale lock file away


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_real_runs_at_once(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [*CLI, str(CMU_SLIDE), "--model", str(tiny_model_dir), "--out", str(out)]
    cmd += ["--quiet", "--precision", "fp32", "--batch-size", "1", "--threads", "1"]
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    results = [(p.returncode, o, e) for p, (o, e) in zip(procs, outputs, strict=True)]
    for _code, _, err in results:
        assert "Traceback" not in err, err
    done = [r for r in results if r[0] == 0 and "done in" in r[1]]
    assert len(done) == 1, results
    other = next(r for r in results if r is not done[0])
    # the loser either refused clearly (lock held) or found the finished outputs
    refused = other[0] == 1 and "another wsi-segment run is writing" in other[2]
    up_to_date = other[0] == 0 and "up to date" in other[1]
    assert refused or up_to_date, other
    assert_complete_output(out / CMU_SLIDE.stem)
    assert leftovers(out) == [CMU_SLIDE.stem]
