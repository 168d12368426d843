"""safetensors files get the mode the umask gives, like every other file the tool writes."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from tests.conftest import LUAD_CLASSES, LUAD_COLORS

SAVE = """
import os, sys, torch
from wsi_segment.models.bundle import save_model
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.segmenter import build_segmenter
from wsi_segment.models.tensor_files import write_tensors
meta = ModelMeta("perm", {classes!r}, {colors!r}, mpp=2.0, tile_size=64)
model = SegmentationModel(
    build_classifier("resnet10t", "cam", 4), build_segmenter("resnet18", 4), meta
)
for umask in sys.argv[2:]:
    os.umask(int(umask, 8))
    os.mkdir(sys.argv[1] + "/" + umask)
    save_model(model, sys.argv[1] + "/" + umask + "/model")
    write_tensors({{"a": torch.zeros(3)}}, sys.argv[1] + "/" + umask + "/plain.safetensors")
"""
UMASKS = ("002", "077")


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    """Each umask's file modes, both written by one process (a umask is the process's)."""
    folder = tmp_path_factory.mktemp("umask")
    code = SAVE.format(classes=LUAD_CLASSES, colors=LUAD_COLORS)
    argv = [sys.executable, "-c", code, str(folder), *UMASKS]
    subprocess.run(argv, check=True, timeout=300)
    found = {}
    for umask in UMASKS:
        files = [folder / umask / "plain.safetensors", *(folder / umask / "model").iterdir()]
        found[umask] = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    return found


def test_a_saved_model_is_readable_by_the_lab_group_under_a_group_umask(
    modes: dict[str, dict[str, int]],
) -> None:
    # safetensors' save_file made the weights 0600 whatever the umask: the service user of
    # the nightly batch could not read a model a lab member trained
    assert modes["002"] == {
        "plain.safetensors": 0o664,
        "model.safetensors": 0o664,
        "model.json": 0o664,
    }


def test_a_private_umask_keeps_the_files_private(modes: dict[str, dict[str, int]]) -> None:
    assert set(modes["077"].values()) == {0o600}, modes["077"]
