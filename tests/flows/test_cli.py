"""The `wsi-segment` command line as a process: an interrupted command ends within a bound
even when something on the way out of the interpreter waits for ever; the implied `segment`
subcommand, options before the slide included."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import foreground_signals
from tests.reliability.conftest import REPO, cli_env

# The real console entry point with two faults injected: `info` is interrupted (Ctrl-C in its
# run), and an exit step never ends (an atexit handler blocked in a pipe read).
INTERRUPTED_AND_STUCK_AT_EXIT = """
import atexit, os, sys
from wsi_segment.flows import cli, cli_info
cli.EXIT_S = 2.0
def run(args):
    raise KeyboardInterrupt
cli_info.run = run
r, w = os.pipe()
atexit.register(os.read, r, 1)
sys.exit(cli.main())
"""


def test_an_interrupted_command_ends_even_if_its_exit_hangs(tmp_path) -> None:
    """Exit 130 about `EXIT_S` after the report, with the one `error:` line, a warning, and
    the stack of every thread (the main one, blocked in the atexit handler, too) on stderr."""
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_AND_STUCK_AT_EXIT, "info", str(tmp_path / "x.svs")],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - t0
    assert done.returncode == 130, done.stderr
    lines = done.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("error:")] == ["error: interrupted"], lines
    assert "warning: still exiting 2 s after the interrupt was reported" in done.stderr
    assert "Current thread" in done.stderr and "\nThread 0x" in done.stderr, done.stderr
    assert 2 <= took < 60, took


# The real console entry point, with `info`'s run serializing a pydantic model whose field
# serializer is where the signal lands: pydantic-core reports the handler's exception as its
# own `PydanticSerializationError` (seen when a SIGTERM came while Prefect imported). With
# "prefect", SIGTERM's handler is one like Prefect's while a flow runs (it raises
# `TerminationSignal` and notes nothing of ours). With "cleanup", no library rewords it: a
# cleanup on the way out fails with its own error, a fault the user must still be told of.
SIGNAL_IN_A_SERIALIZER = """
import os, signal, sys, time
import pydantic
from wsi_segment.flows import cli, cli_info
HANDLER = sys.argv.pop()  # ours | prefect | cleanup | dropped (then `info`'s command line)
SIGNUM = int(sys.argv.pop())  # the signal to send
class Settings(pydantic.BaseModel):
    value: int = 1
    @pydantic.field_serializer("value")
    def signalled(self, value: int) -> int:
        os.kill(os.getpid(), SIGNUM)
        time.sleep(5)  # the handler raises here, inside the serializer
        return value
def run(args):
    if HANDLER == "prefect":
        from prefect.exceptions import TerminationSignal
        def raise_termination(signum, frame):
            raise TerminationSignal(signal=signum)
        signal.signal(signal.SIGTERM, raise_termination)
    if HANDLER == "dropped":  # the handler raises inside a finaliser: Python drops it
        class Finalised:
            def __del__(self):
                os.kill(os.getpid(), SIGNUM)
                time.sleep(5)
        Finalised()
        return 0
    if HANDLER == "cleanup":
        try:
            os.kill(os.getpid(), SIGNUM)
            time.sleep(5)  # the handler raises here, or as os.kill returns
        finally:
            raise RuntimeError("the cleanup failed")
    Settings().model_dump()
cli_info.run = run
sys.exit(cli.main())
"""


REWORDED = "note: the stop came out as PydanticSerializationError: Error calling function"
CLEANUP_FAILED = "note: the stop came out as RuntimeError: the cleanup failed"


@pytest.mark.parametrize(
    ("signum", "handler", "code", "line", "note"),
    [
        (signal.SIGTERM, "ours", 143, "error: terminated (SIGTERM)", REWORDED),
        (signal.SIGINT, "ours", 130, "error: interrupted", REWORDED),
        (signal.SIGTERM, "prefect", 143, "error: terminated (SIGTERM)", REWORDED),
        (signal.SIGTERM, "cleanup", 143, "error: terminated (SIGTERM)", CLEANUP_FAILED),
    ],
    ids=["sigterm", "sigint", "prefect-sigterm", "cleanup-fails"],
)
def test_a_stop_a_library_turns_into_its_own_error_still_ends_as_the_stop(
    tmp_path, signum: int, handler: str, code: int, line: str, note: str
) -> None:
    """The signal's exception, raised inside pydantic-core's serializer, comes out as a
    `PydanticSerializationError`: the command still ends as the stop (exit 128 + the
    signal, its one `error:` line), not with that error's traceback and exit 1; also where
    the handler was Prefect's (its `TerminationSignal` is that error's cause). The error it
    came out as is named on a `note:` line: where it is a cleanup's own fault, not a
    rewording, the stop must not hide it."""
    command = [sys.executable, "-c", SIGNAL_IN_A_SERIALIZER, "info", str(tmp_path / "x.svs")]
    with foreground_signals():  # CI may run the tests with SIGINT ignored: the child would too
        done = subprocess.run(
            [*command, str(signum), handler],
            cwd=REPO,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == code, done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] == [line]
    notes = [ln for ln in done.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith(note), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
        (signal.SIGINT, 130, "error: interrupted"),
    ],
    ids=["sigterm", "sigint"],
)
def test_a_stop_python_drops_still_ends_the_command_as_the_stop(
    tmp_path, signum: int, code: int, line: str
) -> None:
    """The signal's exception raised inside a finaliser (Python prints "Exception ignored"
    and drops it): the command still ends as the stop, not with exit 0 as if none had come
    (`run_command` reads the signal its handlers noted)."""
    command = [sys.executable, "-c", SIGNAL_IN_A_SERIALIZER, "info", str(tmp_path / "x.svs")]
    with foreground_signals():  # CI may run the tests with SIGINT ignored: the child would too
        done = subprocess.run(
            [*command, str(signum), "dropped"],
            cwd=REPO,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert "Exception ignored" in done.stderr, done.stderr  # Python did drop it
    assert done.returncode == code, done.stderr
    assert [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] == [line]


@pytest.mark.parametrize(
    ("typed", "parsed"),
    [
        (["s.svs", "--quiet"], ["segment", "s.svs", "--quiet"]),
        (["--quiet", "s.svs"], ["segment", "--quiet", "s.svs"]),
        (["--out", "o", "s.svs"], ["segment", "--out", "o", "s.svs"]),
        (["batch", "in", "--out", "o"], ["batch", "in", "--out", "o"]),
        (["--help"], ["--help"]),
        (["-h"], ["-h"]),
        ([], []),
    ],
)
def test_the_segment_subcommand_is_implied_before_options_too(
    typed: list[str], parsed: list[str]
) -> None:
    from wsi_segment.flows.cli import implicit_segment

    assert implicit_segment(typed) == parsed


@pytest.fixture(scope="module")
def cmu_crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 420 x 300 px crop of the CMU slide, a tiled TIFF with no mpp (run it with --mpp
    0.5): the commands below are about the process, not the pixels, and the whole slide's
    200 model tiles cost about 6 CPU s more a run."""
    import tifffile

    from tests.conftest import CMU_SLIDE
    from wsi_segment.wsi.slide import open_slide

    with open_slide(CMU_SLIDE) as slide:
        region = slide.read_region((800, 1100), 0, (420, 300))
    path = tmp_path_factory.mktemp("crop") / "cmu_crop.tif"
    tifffile.imwrite(path, region, tile=(256, 256), photometric="rgb")
    return path


def test_options_before_the_slide_run_the_slide(tmp_path, tiny_model_dir, cmu_crop) -> None:
    """`wsi-segment --quiet --out DIR SLIDE` as a user types it: the slide's outputs, exit 0
    (it was "invalid choice: '--quiet'", exit 2, until 2026-11-28)."""
    done = subprocess.run(
        [sys.executable, "-m", "wsi_segment.flows.cli", "--quiet", "--model",
         str(tiny_model_dir), "--out", str(tmp_path), "--mpp", "0.5", str(cmu_crop)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / cmu_crop.stem / "summary.json").is_file()


def test_a_reader_that_stops_reading_ends_the_command_quietly(
    tmp_path, tiny_model_dir, cmu_crop
) -> None:
    """`wsi-segment SLIDE | head -0`: the slide's outputs whole, no traceback, exit 141 as a
    process killed by SIGPIPE (it was a BrokenPipeError traceback, exit 1, until
    2026-11-28)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsi_segment.flows.cli", str(cmu_crop), "--model",
         str(tiny_model_dir), "--out", str(tmp_path), "--quiet", "--mpp", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves before the command's line is printed
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 128 + signal.SIGPIPE, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    summary = tmp_path / cmu_crop.stem / "summary.json"
    assert summary.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [cmu_crop.stem]
