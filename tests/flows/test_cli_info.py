"""`wsi-segment info SLIDE` as users run it: a real subprocess, JSON on stdout, exit codes.

(What `segment` does with the same bad slides is covered in tests/reliability/test_bad_slides.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR

REPO = Path(__file__).resolve().parents[2]


def run_info(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "wsi_segment.flows.cli", "info", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def ok_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def test_cmu_info():
    info = ok_json(run_info(CMU_SLIDE))
    assert info == {
        "path": str(CMU_SLIDE.resolve()),
        "backend": "openslide",
        "vendor": "aperio",
        "level_count": 1,
        "level_dimensions": [[2220, 2967]],
        "level_downsamples": [1.0],
        "mpp": [0.499, 0.499],
        "mpp_source": "metadata",
        "objective_power": 20.0,
        "associated_images": ["label", "macro", "thumbnail"],
        "bounds_offset": [0, 0],
        "tile_size": [[240, 240]],
    }


def test_backend_and_mpp_options():
    info = ok_json(run_info(CMU_SLIDE, "--backend", "tiffslide", "--mpp", "0.25"))
    assert info["backend"] == "tiffslide" and info["vendor"] == "aperio"
    assert info["mpp"] == [0.25, 0.25] and info["mpp_source"] == "override"
    assert info["level_dimensions"] == [[2220, 2967]]


def test_ome_tiff_falls_back_to_tiffslide_with_its_mpp():
    info = ok_json(run_info(DATA_DIR / "OS-1-detail.ome.tif"))
    assert info["backend"] == "tiffslide" and info["vendor"] == "ome"
    assert info["level_dimensions"] == [[1101, 1101]]
    assert info["mpp"] == pytest.approx([0.2271, 0.2271], abs=1e-4)


def test_no_mpp_is_null_and_file_url_works():
    info = ok_json(run_info(DATA_DIR / "boxes.tiff"))
    assert info["mpp"] is None and info["mpp_source"] is None and info["level_count"] == 4
    info = ok_json(run_info(CMU_SLIDE.resolve().as_uri()))
    assert info["backend"] == "tiffslide" and info["path"].startswith("file://")
    assert info["mpp"] == [0.499, 0.499]


@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (path, words the error line must contain)."""
    d = tmp_path_factory.mktemp("bad")
    data = CMU_SLIDE.read_bytes()
    (d / "text.svs").write_text("this is not a slide\n" * 20)
    (d / "cut_mid.svs").write_bytes(data[:700_000])  # TIFF directory lost
    (d / "cut_tables.svs").write_bytes(data[:1_277_950])  # opens; JPEG tables lost
    unreadable = "truncated, corrupt or of an unsupported format"
    return {
        "broken": (DATA_DIR / "broken.svs", unreadable),
        "missing": (d / "missing.svs", "no such file"),
        "text": (d / "text.svs", unreadable),
        "cut_mid": (d / "cut_mid.svs", unreadable),
        "cut_tables": (d / "cut_tables.svs", "truncated or corrupt"),
    }


@pytest.mark.parametrize("case", ["broken", "missing", "text", "cut_mid", "cut_tables"])
def test_bad_slide_is_one_error_line(case, bad_slides):
    path, reason = bad_slides[case]
    result = run_info(path)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # nothing else (tifffile's log lines are dropped)
    assert lines[0].startswith("error:") and path.name in lines[0] and reason in lines[0]


def test_usage_errors_exit_2():
    result = run_info(CMU_SLIDE, "--backend", "bioformats")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = run_info(CMU_SLIDE, "--mpp", "-1")
    assert result.returncode == 2 and "[0.01, 100]" in result.stderr
