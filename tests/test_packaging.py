"""The wheel as users install it: one import name (`wsi_segment`), the layers inside it, the
public API and `python -m wsi_segment`, immune to folders named `models/` or `pipeline/`
that come first on the path (a working directory, another distribution)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("wsi", "models", "pipeline", "flows")

PUBLIC_API_RUN = """
import json, sys
import wsi_segment
from wsi_segment import SegmentParams, segment_slide, open_slide, load_model, WsiSegmentError
params = SegmentParams(model_dir=sys.argv[2], device="cpu", precision="fp32", threads=1)
result = segment_slide(sys.argv[1], sys.argv[3], params)
with open_slide(sys.argv[1]) as slide:
    backend = slide.backend
mods = {m: sys.modules[m].__file__ for m in
        ("wsi_segment.wsi.slide", "wsi_segment.models.bundle", "wsi_segment.pipeline.segment")}
print(json.dumps({"status": result.status, "modules": mods, "backend": backend,
                  "all": wsi_segment.__all__, "decoys": [m for m in ("models", "pipeline")
                                                          if m in sys.modules]}))
"""


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory) -> tuple[Path, str]:
    """Built from a copy of the sources (the build writes build/ and egg-info beside them);
    the wheel and what `pip wheel -q` printed."""
    src = tmp_path_factory.mktemp("src")
    for name in (*LAYERS, "wsi_segment"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (found,) = dist.glob("wsi_segment-*.whl")
    return found, build.stdout + build.stderr


@pytest.fixture(scope="module")
def wheel(wheel_build: tuple[Path, str]) -> Path:
    return wheel_build[0]


def test_a_quiet_build_prints_nothing(wheel_build: tuple[Path, str]) -> None:
    """`pip install -q` of a fresh clone prints no setuptools warnings: the data folders
    (demo_model/, calibration_tiles/) ship as package data by name, not as packages that
    setuptools would warn are "absent from the `packages` configuration"."""
    assert wheel_build[1] == ""


def test_wheel_has_one_top_level_name_the_demo_model_and_py_typed(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"wsi_segment"}
    for must in (
        "wsi_segment/py.typed",
        "wsi_segment/__main__.py",
        "wsi_segment/errors.py",
        "wsi_segment/wsi/slide.py",
        "wsi_segment/models/heads/__init__.py",
        "wsi_segment/models/demo_model/model.json",
        "wsi_segment/models/demo_model/model.safetensors",
        "wsi_segment/models/runtimes/openvino_runtime.py",
        "wsi_segment/models/calibration_tiles/cmu1-1264-1264.png",  # precision auto's tiles
        "wsi_segment/pipeline/segment.py",
        "wsi_segment/flows/cli.py",
    ):
        assert must in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "wsi-segment = wsi_segment.flows.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


@pytest.mark.slow  # builds and installs the wheel; make demo / CI install the project each run
def test_installed_wheel_segments_a_slide_beside_decoy_packages(
    wheel: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A fresh venv whose only wsi_segment is the wheel; the third-party packages come from
    # this environment's site-packages through a .pth line (its editable-install hook is a
    # .pth file of that folder and is not run this way).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # Decoys in the working directory and first on PYTHONPATH: importing them fails loudly.
    work = tmp_path / "work"
    for name in ("models", "pipeline", "wsi", "flows"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"raise ImportError('decoy {name} imported')\n")
    env = {**os.environ, "PYTHONPATH": str(work)}
    run = subprocess.run(
        [python, "-c", PUBLIC_API_RUN, str(CMU_SLIDE), str(tiny_model_dir), str(tmp_path / "a")],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["status"] == "done" and report["backend"] in ("openslide", "tiffslide")
    assert all(Path(f).is_relative_to(site / "wsi_segment") for f in report["modules"].values())
    assert report["decoys"] == []
    assert {"segment_slide", "SegmentParams", "open_slide", "load_model"} <= set(report["all"])

    # python -m wsi_segment is the CLI, with the demo model resolved from the wheel too
    cli = subprocess.run(
        [python, "-m", "wsi_segment", str(CMU_SLIDE), "--out", str(tmp_path / "b"),
         "--model", str(tiny_model_dir), "--device", "cpu", "--precision", "fp32", "--quiet"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "b" / "CMU-1-Small-Region" / "summary.json").is_file()
    demo = subprocess.run(
        [python, "-c", "from wsi_segment.pipeline.prepare import resolve_model_dir;"
         "from wsi_segment import SegmentParams; print(resolve_model_dir(SegmentParams()))"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert Path(demo.stdout.strip()) == site / "wsi_segment" / "models" / "demo_model"
