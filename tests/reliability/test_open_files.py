"""The open-file limit (`wsi_segment.open_files`), in real processes whose limit is lowered
the way a scheduler or a container lowers it (`setrlimit` before the program starts).

Before: a batch under a soft limit of a few dozen failed slides as "internal error" or
"cannot write outputs", hung, or flooded stderr; openslide's "Too many open files" (or,
with no descriptor left at all, its "Unsupported or missing image file") was reported as a
truncated or corrupt slide, and since that is a `SlideError` the batch recorded healthy
slides as known failures, which later nights skipped.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import CMU_SLIDE
from tests.reliability.conftest import (
    CLI,
    CliResult,
    assert_clean_error,
    assert_nothing_written,
    cli_env,
)
from wsi_segment.open_files import MIN_OPEN_FILES
from wsi_segment.pipeline.batch_inputs import BatchItem
from wsi_segment.pipeline.known_failures import known_failures, settle_records
from wsi_segment.pipeline.outputs.failure_record import read_record
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import SlideResult
from wsi_segment.pipeline.up_to_date import model_files

REPO = Path(__file__).resolve().parents[2]
LIMIT_FIX = "`ulimit -n 4096`"


def run_limited(args: list[str], soft: int, hard: int | None = None) -> CliResult:
    """The real CLI started with its open-file limits set to `soft` and `hard` (None: the
    hard limit this process has)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if hard is None else hard
    proc = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=cli_env(),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def slides_folder(root: Path, count: int = 2, slide: Path = CMU_SLIDE) -> Path:
    """`count` copies of `slide` (cmu0, cmu1, ...; its suffix kept) in `root`/slides."""
    folder = root / "slides"
    folder.mkdir()
    for i in range(count):
        shutil.copy(slide, folder / f"cmu{i}{slide.suffix}")
    return folder


def test_a_batch_under_a_low_soft_limit_raises_it_and_succeeds(
    tmp_path: Path, tiny_model_dir: Path, cmu_crop: Path
) -> None:
    """Soft limit 24 (a hard one far above): before, both slides failed with "internal
    error (OSError): [Errno 24] Too many open files" in 8 s. Two copies of a crop of the CMU
    slide: the run's descriptors are its decoders', pipes' and outputs', not the slide's
    (the CLI's process peaks at 29 open with the crops, as with two whole slides, which
    cost a dozen CPU seconds more)."""
    out = tmp_path / "out"
    args = ["batch", slides_folder(tmp_path, slide=cmu_crop), "--model", tiny_model_dir]
    args += ["--out", out]
    args += ["--quiet", "--mpp", "0.5", "--workers", "0", "--decoders", "2"]
    result = run_limited([str(a) for a in args], soft=24)
    assert result.code == 0, result.stderr[-3000:]
    assert "2 done, 0 up-to-date, 0 failed" in result.stderr, result.stderr[-3000:]
    assert "Too many open files" not in result.stderr + result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        ".report",  # the night's record (pipeline/outputs/night_record.py)
        "cmu0",
        "cmu1",
        "cohort.csv",
        "qupath-project",
        "report.html",
    ]


def test_a_hard_limit_below_a_runs_need_is_refused_up_front(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Hard limit 100: before, the batch and the slide ran (and a batch under a lower one
    failed its slides one by one, or hung)."""
    out = tmp_path / "out"
    folder = slides_folder(tmp_path, 1)
    runs = {
        "batch": ["batch", folder, "--model", tiny_model_dir, "--out", out, "--workers", "0"],
        "segment": [folder / "cmu0.svs", "--model", tiny_model_dir, "--out", out],
    }
    for name, args in runs.items():
        result = run_limited([str(a) for a in args], soft=100, hard=100)
        text = assert_clean_error(result, "open-file limit is 100", str(MIN_OPEN_FILES), LIMIT_FIX)
        assert "hard limit" in text and "LimitNOFILE" in text, name
        assert_nothing_written(out)


# Opens a slide with no descriptor left (openslide imported before, and not: importing it
# needs one), with one left (openslide needs two), and reads a region with none left; prints
# each error's class, message and whether the project's retry rule calls it transient.
EXHAUST = """
import json, os, sys
from wsi_segment.wsi.retries import is_transient
from wsi_segment.wsi.slide import open_slide

def full(free):
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    for _ in range(free):
        os.close(held.pop())
    return held

def attempt(case, free, fn):
    held = full(free)
    try:
        fn()
        found = {"case": case, "error_class": None}
    except Exception as exc:
        found = {"case": case, "error_class": type(exc).__name__, "message": str(exc),
                 "transient": is_transient(exc)}
    for fd in held:
        os.close(fd)
    print(json.dumps(found))

path = sys.argv[1]
attempt("open, none left, before openslide is imported", 0, lambda: open_slide(path))
import openslide
attempt("open, none left", 0, lambda: open_slide(path))
attempt("open, one left", 1, lambda: open_slide(path))
slide = open_slide(path)
attempt("read, none left", 0, lambda: slide.read_region((0, 0), 0, (256, 256)))
"""


def test_running_out_while_opening_a_slide_is_named_and_never_a_known_failure(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Before: "not a readable slide (...) it may be truncated, corrupt", a `SlideError`
    recorded as a known failure, or, with one descriptor left, the slide opened by
    tiffslide instead of openslide."""
    slide = tmp_path / "cmu.svs"
    shutil.copy(CMU_SLIDE, slide)
    proc = subprocess.run(
        [sys.executable, "-c", EXHAUST, str(slide)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=cli_env(),
        preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        ),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(found) == 4, proc.stdout
    out = tmp_path / "out"
    out.mkdir()
    params = SegmentParams(model_dir=tiny_model_dir, precision="fp32")
    model = model_files(params)
    items = [BatchItem(str(slide), None, "cmu")]
    for case in found:
        # what the batch makes of it (flows.batch_flow.slide_task, then settle_records)
        failed = SlideResult(str(slide), "failed", None, {}, case.get("message"), 0.1,
                             case["error_class"])  # fmt: skip
        results, problems = settle_records(items, [failed], str(out), params, model)
        assert problems == [] and results == [failed]
        assert read_record(str(out), "cmu") is None, case
        assert known_failures(items, str(out), params, model) == {}
        assert case["error_class"] == "TooManyOpenFiles", case
        message = case["message"]
        for words in (str(slide), "this process ran out of file descriptors", "it may open 64",
                      "says nothing about the slide", LIMIT_FIX):  # fmt: skip
            assert words in message, (case["case"], words, message)
        assert "corrupt" not in message and not case["transient"], case
    assert list(out.iterdir()) == []


def test_running_out_during_a_run_is_one_error_with_the_fix(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A run whose parent left it 40 descriptors (a hard limit of 256, 213 held open by the
    parent: a leaking scheduler or notebook) is enough for a slide without decoder processes
    (about 10) and not for 16 of them (3 each): before, a traceback of the decoder pool's
    OSError; or, with fewer left, "cannot write outputs" and the fix for an unwritable
    folder."""
    out = tmp_path / "out"
    args = [CMU_SLIDE, "--model", tiny_model_dir, "--out", out, "--quiet", "--mpp", "0.5"]
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(256 - 3 - 40)]
    try:
        proc = subprocess.run(
            [*CLI, *map(str, [*args, "--decoders", "16"])],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env=cli_env(),
            pass_fds=held,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
        )
    finally:
        for fd in held:
            os.close(fd)
    result = CliResult(proc.returncode, proc.stdout, proc.stderr)
    text = assert_clean_error(result, "this process ran out of file descriptors", LIMIT_FIX)
    assert "it may open 256" in text and "writable" not in text
    assert_nothing_written(out)
