"""Fixtures for flow tests: one Prefect test server per session, a tiny model, small slides.

Prefect's temporary server costs 10-20 s to start, so every flow test shares one
(`prefect_harness`). The model is a tiny real network (resnet10t) at 8 um/px with 64 px
tiles, so a slide is a handful of tiles and the tests measure orchestration, not compute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import wsi_segment.flows.prefect_env  # noqa: F401  (offline settings before prefect is imported)

if TYPE_CHECKING:
    from tests.flows.test_deploy_server import Processes

DATA = Path(__file__).resolve().parents[1] / "data"
CMU = DATA / "CMU-1-Small-Region.svs"
BROKEN = DATA / "broken.svs"
CLASSES = ["TE", "NEC", "LYM", "TAS"]
COLORS = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Flows in this session run against one temporary Prefect server (SQLite, offline)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded resnet10t classifier + DeepLabV3+ saved as a model folder (8 um/px, 64 px)."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def save_tiny_model(folder: Path) -> Path:
    """The tiny model of `tiny_model`, saved at `folder` (for tests outside flows/)."""
    import torch

    from wsi_segment.models.bundle import save_model
    from wsi_segment.models.classifier import build_classifier
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.models.segmentation_model import SegmentationModel
    from wsi_segment.models.segmenter import Segmenter

    torch.manual_seed(0)
    meta = ModelMeta(name="tiny-test", classes=CLASSES, colors=COLORS, mpp=8.0, tile_size=64)
    model = SegmentationModel(
        build_classifier("resnet10t", "cam", len(CLASSES)),
        Segmenter("tu-resnet10t", len(CLASSES), decoder_channels=16),
        meta,
    )
    return save_model(model, folder, meta)


def write_synthetic_slide(path: Path, size: tuple[int, int], seed: int, mpp: float = 1.0) -> Path:
    """A tiled TIFF that openslide reads as Aperio: tissue blobs of the four classes."""
    import tifffile

    from wsi_segment.synthetic.textures import render_tissue

    w, h = size
    rng = np.random.default_rng(seed)
    labels = np.full((h, w), 255, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for cls in range(4):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        r = rng.uniform(0.15, 0.3) * min(w, h)
        labels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = cls
    image = render_tissue(labels, rng, px_um=mpp)
    desc = (
        f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90"
        f"|AppMag = 10|MPP = {mpp}"
    )
    tifffile.imwrite(
        path, image, tile=(256, 256), description=desc, compression="jpeg", metadata=None
    )
    return path


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic slides (different sizes) in one folder."""
    folder = tmp_path_factory.mktemp("slides")
    write_synthetic_slide(folder / "synth-a.tif", (1024, 768), seed=1)
    write_synthetic_slide(folder / "synth-b.tif", (768, 1024), seed=2)
    return folder


def copy_slides(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(src / name, dst / name)
    return dst


def output_files(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder that must not depend on how the run was orchestrated.

    summary.json holds timings, dates and the command line, so it is compared separately.
    """
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "summary.json":
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


def stable_summary(folder: Path) -> dict:
    """summary.json without the fields that change from run to run."""
    import json

    summary = json.loads((folder / "summary.json").read_text())
    # precision holds the bf16 trial's measured speeds, which differ from run to run
    # command and run say which flow run or command made the outputs
    unstable = ("timings_s", "read_stats", "precision", "created_utc", "command", "run", "versions")
    for key in (*unstable, "software"):
        summary.pop(key, None)
    summary.get("parameters", {}).pop("threads", None)
    # how the chunks were read and run depends on where they ran (a cluster's bands decide
    # their own run policy on their workers)
    summary.pop("run_policy", None)
    summary.pop("engine", None)  # the engine's figures and times: a local run's only
    for key in ("read_device", "read_device_reason"):
        summary.get("run_stats", {}).pop(key, None)
    return summary


def deploy_nightly(env: dict[str, str], slides: Path, out: Path, model: Path, *params: str) -> None:
    """The recipe's process work pool and `deploy/prefect.yaml`'s `nightly` deployment on
    it, reading `slides` into `out` with `model`; `params`: more `name=value` parameters."""
    from tests.flows.test_deploy_server import BIN, run

    prefect = str(BIN / "prefect")
    run([prefect, "work-pool", "create", "wsi-segment", "--type", "process"], env)
    argv = [prefect, "deploy", "--prefect-file", "deploy/prefect.yaml", "--name", "nightly"]
    for param in (f"input={slides}", f"out={out}", f"model_dir={model}", *params):
        argv += ["--param", param]
    run(argv, env)


def start_worker(
    env: dict[str, str], processes: Processes, name: str = "worker"
) -> subprocess.Popen[bytes]:
    """The worker as its systemd unit starts it (its log: `name`)."""
    from tests.flows.test_deploy_server import SYSTEMD, unit_commands

    [argv] = unit_commands(SYSTEMD / "prefect-worker.service", "ExecStart")
    return processes.start(name, argv, env)


def run_nightly(env: dict[str, str]) -> str:
    """Start a run of the `nightly` deployment now; its flow run's id."""
    from tests.flows.test_deploy_server import BIN, UUID, run

    stdout = run([str(BIN / "prefect"), "deployment", "run", "segment-batch/nightly"], env)
    found = UUID.search(stdout)
    assert found is not None, stdout
    return found.group(0)


SLURM_SETUP = Path(__file__).resolve().parents[2] / "deploy" / "slurm-single-node.sh"
SLURM_PORTS = (6817, 6818)  # slurmctld's and slurmd's, as the script configures them


def listening(port: int) -> list[str]:
    """The local addresses something listens on at TCP `port` (`ss -ltn`)."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]
    return [a.rsplit(":", 1)[0] for a in found if a.rsplit(":", 1)[1] == str(port)]


@pytest.fixture
def slurm() -> Iterator[dict[str, str]]:
    """A running single-node SLURM (deploy/slurm-single-node.sh); the environment that
    reaches it (SLURM_CONF). Skipped, saying why, without root, the packages or `ss`, or
    where another SLURM holds its ports."""
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld and slurmd needs root")
    tools = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "ss")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge (Debian)")
    if any(listening(port) for port in SLURM_PORTS):
        pytest.skip("ports 6817/6818 are taken by another SLURM on this machine")
    folder = Path(tempfile.mkdtemp(prefix="wsitest-slurm-"))
    folder.chmod(0o755)  # munged runs as `munge` and must reach its socket folder
    try:
        started = subprocess.run(
            ["sh", str(SLURM_SETUP), "start", str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if started.returncode != 0:
            pytest.fail(f"{SLURM_SETUP} start: {started.stdout}{started.stderr}")
        yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        subprocess.run(["sh", str(SLURM_SETUP), "stop", str(folder)], timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
