"""A model folder read without its network: a warm OpenVINO load builds no torch network and
imports neither torch nor timm, torchvision or segmentation-models-pytorch; the network, when
built, is the files' own."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TORCH_SPEC, torch_spec
from wsi_segment.errors import ModelError
from wsi_segment.models.cpu import cpu_flags
from wsi_segment.models.model_files import ModelFiles
from wsi_segment.models.runtimes.select import OpenedRuntime, open_runtime
from wsi_segment.models.runtimes.spec import RuntimeSpec

ROOT = Path(__file__).resolve().parents[2]

# A warm load in a fresh interpreter, as a run's background load does it
# (`load_for_process`), then one batch: prints what it imported and built by then, and the
# batch's outputs.
_WARM_LOAD = """
import json, sys
from wsi_segment.pipeline.inference.model_handle import load_for_process
from tests.models.test_model_files import openvino_fp32
spec = openvino_fp32()
loaded = load_for_process(sys.argv[1], "cpu", spec)
from tests.models.test_model_files import one_batch
outputs = one_batch(loaded.runtime)
heavy = ("torch", "timm", "torchvision", "segmentation_models_pytorch")
print(json.dumps({
    "runtime": loaded.runtime.runtime,
    "runtime_cache": loaded.report()["runtime_cache"],
    "imported": [m for m in heavy if m in sys.modules],
    "outputs": outputs,
}))
"""


def openvino_fp32() -> RuntimeSpec:
    """OpenVINO at fp32 in one thread on this machine, as a run's plan hands it the loader."""
    return dataclasses.replace(TORCH_SPEC, runtime="openvino", cpu_flags=cpu_flags())


def one_batch(runtime: OpenedRuntime) -> list[str]:
    """The hex bytes of the reduced outputs of two fixed tiles in `runtime` at the spec's
    geometry (the graph the fp32 check exported). This module imports no torch at its top: the warm process
    imports it."""
    geometry = openvino_fp32().geometry
    tile = geometry.tile
    tiles = (np.arange(2 * tile * tile * 3).reshape(2, tile, tile, 3) % 251).astype(np.uint8)
    out = runtime.executor(geometry, 2).run(tiles)
    return [t.tobytes().hex() for t in (out.probs, out.labels, out.cls_probs)]


def test_a_warm_openvino_load_builds_no_network_and_imports_no_torch(
    tiny_model_dir: Path, runtime_cache: Path
) -> None:
    """Once a load has exported, checked and compiled the graph (here, or an earlier test of
    this run: the run's cache), a fresh process finds the graph and the check's verdict in the
    cache and gives the same bytes without building the network, or importing torch."""
    files = ModelFiles(tiny_model_dir, "cpu")
    first = open_runtime(files, openvino_fp32(), runtime_cache)
    assert first.runtime == "openvino"
    first_outputs = one_batch(first)
    env = {**os.environ, "WSI_SEGMENT_CACHE_DIR": str(runtime_cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _WARM_LOAD, str(tiny_model_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warm = json.loads(done.stdout.strip().splitlines()[-1])
    assert warm["runtime"] == "openvino" and warm["imported"] == []
    # what its summary.json reports: the batch's graph loaded, nothing compiled or checked
    assert warm["runtime_cache"] == {
        "graphs_compiled": 0,
        "graphs_loaded": 1,
        "checks_computed": 0,
        "network_built": False,
    }
    assert warm["outputs"] == first_outputs


def test_the_network_is_the_files_it_was_read_from(tiny_model_dir: Path) -> None:
    import torch

    from wsi_segment.models.bundle import load_bundle

    files = ModelFiles(tiny_model_dir, "cpu")
    network = files.network()
    assert files.network() is network  # built once
    whole = load_bundle(tiny_model_dir)
    assert files.identity == whole.identity and files.meta == network.meta == whole.meta
    assert (files.validation_patches is None) == (whole.validation_patches is None)
    built, read = network.state_dict(), whole.network().state_dict()
    assert built.keys() == read.keys()
    for name, tensor in built.items():
        assert torch.equal(tensor, read[name]), name


def test_files_replaced_between_the_read_and_the_build_are_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from wsi_segment.models.bundle import load_model, save_model

    folder = tmp_path / "model"
    model = load_model(tiny_model_dir)
    save_model(model, folder)
    files = ModelFiles(folder, "cpu")
    import torch

    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_model(model, folder)  # another run's training saved over it
    with pytest.raises(ModelError, match="changed while the model loaded"):
        files.network()


def test_torch_runs_the_network_the_files_build(tiny_model_dir: Path) -> None:
    files = ModelFiles(tiny_model_dir, "cpu")
    opened = open_runtime(files, torch_spec("fp32"))
    assert opened.network is files.network()


def test_weights_not_matching_model_json_are_refused_before_any_build(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from wsi_segment.models.bundle import load_model, save_model

    folder = tmp_path / "model"
    save_model(load_model(tiny_model_dir), folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"model.safetensors does not match the sha256"):
        ModelFiles(folder, "cpu")
