"""Helpers for the reliability matrix (issue 6): run the real CLI and check how it fails.

Two ways to run `wsi-segment`:

- `run_cli`: a real subprocess (`python -m wsi_segment.flows.cli`), as a user or a scheduler runs it.
  Importing torch costs 5-30 s on the shared 2-core machine, so tests batch several
  slides into one invocation where they can.
- `run_cli_inprocess`: `flows.cli.main(argv)` in the test process (same dispatcher, same
  error handling, model cached per process). Any exception that escapes `main` is what a
  user would see as a traceback, so it fails the test.

Every expected failure must look the same: exit 1 (2 for usage errors), one stderr line
per failed slide starting with `error:` that names the file and the fix, no traceback,
and nothing at all left in the output folder (pipeline/outputs/output_dir.py removes its lock
file when a run ends; only a SIGKILLed run leaves an empty `.NAME.lock` behind).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "wsi_segment.flows.cli"]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(args: list, timeout: float = 600, cwd: Path | None = None) -> CliResult:
    """The real CLI in a subprocess; a hang fails the test through the timeout."""
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env=cli_env(),
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def cli_args(slide, model, out, *extra) -> list:
    """`wsi-segment` arguments for one slide with the tests' model at 0.5 um/px, quietly."""
    return [slide, "--model", model, "--out", out, "--quiet", "--mpp", "0.5", *extra]


def run_cli_inprocess(args: list, capsys: pytest.CaptureFixture[str]) -> CliResult:
    """`flows.cli.main` in this process; argparse's SystemExit becomes the exit code."""
    from wsi_segment.flows.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def assert_clean_error(result: CliResult, *needles: str, code: int = 1, count: int = 1) -> str:
    """Exit `code`, exactly `count` `error:` lines, no traceback; returns the error text.

    Each needle (file name, the fix) must appear in the error text.
    """
    assert result.code == code, (result.code, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stdout
    lines = result.error_lines
    assert len(lines) == count, result.stderr[-3000:]
    text = "\n".join(lines)
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def assert_usage_error(result: CliResult, *needles: str) -> None:
    """argparse usage error: exit 2, usage + one `error:` line naming the valid range."""
    assert result.code == 2, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    assert "usage:" in result.stderr
    err = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(err) == 1, result.stderr
    for needle in needles:
        assert needle in err[0], (needle, err[0])


def leftovers(out_root: Path) -> list[str]:
    """Everything in `out_root`, hidden lock and partial files included."""
    if not out_root.exists():
        return []
    return sorted(p.name for p in out_root.iterdir())


def assert_nothing_written(out_root: Path, existed: bool = False) -> None:
    """Nothing in `out_root`; not even the folder, unless it `existed` before the run."""
    assert leftovers(out_root) == [], leftovers(out_root)
    assert out_root.is_dir() if existed else not out_root.exists(), out_root


def assert_complete_output(out_dir: Path) -> dict:
    """A finished slide folder: its five outputs, summary and GeoJSON parse."""
    import json

    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [
        "overlay-thumbnail.jpg",
        "overlay.png",
        "probabilities.ome.zarr",
        "summary.json",
        "tissue.geojson",
    ]
    json.loads((out_dir / "tissue.geojson").read_text(encoding="utf-8"))
    return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))


def write_tiff(path: Path, image: np.ndarray, **kwargs) -> Path:
    import tifffile

    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", **kwargs)
    return path


@pytest.fixture(scope="session")
def cmu_bytes() -> bytes:
    return CMU_SLIDE.read_bytes()


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def cmu_crop(slides_dir) -> Path:
    """A 420 x 300 px crop of the real CMU slide, tiled TIFF with no mpp (use --mpp 0.5)."""
    from wsi_segment.wsi.slide import open_slide

    with open_slide(CMU_SLIDE) as slide:
        region = slide.read_region((800, 1100), 0, (420, 300))
    return write_tiff(slides_dir / "cmu_crop.tif", region)


@pytest.fixture(scope="session")
def fake_model_dir(tiny_model_dir, tmp_path_factory):
    """Factory: a copy of the tiny model folder to break in a test."""
    import shutil

    def make(name: str) -> Path:
        dst = tmp_path_factory.mktemp("badmodels") / name
        shutil.copytree(tiny_model_dir, dst)
        return dst

    return make
