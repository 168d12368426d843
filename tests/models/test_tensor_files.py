"""safetensors files get the mode the umask gives, like every other file the tool writes."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import LUAD_CLASSES, LUAD_COLORS

SAVE = """
import os, sys, torch
os.umask(int(sys.argv[2], 8))
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
save_model(model, sys.argv[1] + "/model")
write_tensors({{"a": torch.zeros(3)}}, sys.argv[1] + "/plain.safetensors")
"""


def _modes(folder: Path, umask: str) -> dict[str, int]:
    code = SAVE.format(classes=LUAD_CLASSES, colors=LUAD_COLORS)
    subprocess.run([sys.executable, "-c", code, str(folder), umask], check=True, timeout=300)
    files = [folder / "plain.safetensors", *(folder / "model").iterdir()]
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}


def test_a_saved_model_is_readable_by_the_lab_group_under_a_group_umask(tmp_path: Path) -> None:
    # safetensors' save_file made the weights 0600 whatever the umask: the service user of
    # the nightly batch could not read a model a lab member trained
    assert _modes(tmp_path, "002") == {
        "plain.safetensors": 0o664,
        "model.safetensors": 0o664,
        "model.json": 0o664,
    }


def test_a_private_umask_keeps_the_files_private(tmp_path: Path) -> None:
    modes = _modes(tmp_path, "077")
    assert set(modes.values()) == {0o600}, modes
