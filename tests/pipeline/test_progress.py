"""pipeline.progress: what a terminal shows around a slide's run, and nothing elsewhere."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from wsi_segment.pipeline.progress import BarProgress, NullProgress

ROOT = Path(__file__).resolve().parents[2]
_SHOW = """
from wsi_segment.pipeline.progress import BarProgress
bar = BarProgress(quiet={quiet})
bar.note("slide: loading the model")
bar.start(3, desc="slide")
bar.advance(3)
bar.close()
"""


def _stderr_of(code: str, terminal: bool, sized: bool = True) -> str:
    """What `code` writes on stderr, a terminal's (a pseudo-terminal, 100 x 24 where
    `sized`, else of no size) or a pipe."""
    if not terminal:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        return done.stderr
    main, side = pty.openpty()
    if sized:  # a fresh pseudo-terminal has no size
        fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], stderr=side, stdout=subprocess.DEVNULL, cwd=ROOT
        )
        assert done.returncode == 0
        os.close(side)
        side = -1
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(main)
        if side >= 0:
            os.close(side)


def test_a_terminal_sees_the_note_before_the_bar_and_a_pipe_or_quiet_nothing() -> None:
    shown = _stderr_of(_SHOW.format(quiet=False), terminal=True)
    assert "slide: loading the model" in shown
    assert shown.index("loading the model") < shown.index("3/3")
    assert _stderr_of(_SHOW.format(quiet=True), terminal=True).strip() == ""
    assert _stderr_of(_SHOW.format(quiet=False), terminal=False) == ""


def test_a_terminal_of_no_size_still_sees_the_bar() -> None:
    """Left to tqdm, a terminal that reports 0 x 0 (a pseudo-terminal opened without a size,
    as some container and job shells give) shows no bar at all; it gets one 80 wide."""
    shown = _stderr_of(_SHOW.format(quiet=False), terminal=True, sized=False)
    assert "slide: loading the model" in shown
    last = shown.replace("\r\n", "\r").split("\r")[-2]  # the bar's final state
    assert "3/3" in last and len(last) == 80


def test_a_library_call_reports_nothing(capsys) -> None:
    quiet = NullProgress()
    quiet.note("loading the model")
    quiet.start(3)
    quiet.advance(3)
    quiet.close()
    assert capsys.readouterr() == ("", "")
    assert not BarProgress(quiet=True).enabled


def test_a_closed_stderr_shows_nothing_and_fails_nothing(monkeypatch) -> None:
    """`wsi-segment SLIDE 2>&-` (a daemon, a cron line): Python makes sys.stderr None, and
    `isatty()` on it failed the run with exit 1 and no word, before any work."""
    monkeypatch.setattr(sys, "stderr", None)
    bar = BarProgress(quiet=False)
    assert bar.enabled is False
    bar.start(3)
    bar.note("loading the model")
    bar.advance(3)
    bar.close()
