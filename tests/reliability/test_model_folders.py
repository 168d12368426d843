"""Hostile and broken model folders (issue 22, items 2 and 7).

- Weight files lie inside the model folder: `..`, absolute paths and links leading out are
  refused; a missing one is one `error:` line.
- The model's identity (fingerprint, summary.json `model.sha256`) is the hash of the bytes
  loaded: weights changed behind a run's back are never "up to date".
- Every key of model.json is checked once, when it is read: one error naming the key, the
  value and what is allowed; a bundle whose encoder would download is refused at load,
  before any network access.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import LUAD_CLASSES, LUAD_COLORS
from tests.reliability.conftest import (
    assert_clean_error,
    assert_complete_output,
    assert_nothing_written,
    cli_args,
    run_cli_inprocess,
)
from wsi_segment.errors import ModelError
from wsi_segment.models.meta import read_model_json


def edit_json(folder: Path, change) -> None:
    path = folder / "model.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def other_weights(tmp_path_factory) -> Path:
    """Weights of the tiny test model's architecture with other values (seed 1)."""
    import torch

    from wsi_segment.models.bundle import save_model
    from wsi_segment.models.classifier import build_classifier
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.models.segmentation_model import SegmentationModel
    from wsi_segment.models.segmenter import build_segmenter

    torch.manual_seed(1)
    meta = ModelMeta("tiny-random", LUAD_CLASSES, LUAD_COLORS, mpp=2.0, tile_size=64)
    model = SegmentationModel(
        build_classifier("resnet10t", "cam", 4), build_segmenter("resnet18", 4), meta
    )
    folder = save_model(model, tmp_path_factory.mktemp("other"), weights_dtype="float16")
    return folder / "model.safetensors"


# --- item 2: weight files inside the folder, identity from the bytes loaded ---


def test_weights_outside_the_folder_are_refused(fake_model_dir, cmu_crop, tmp_path, capsys):
    """`weights.file: ../w.safetensors` used to be followed while the identity hashed
    `<model>/model.safetensors`, so changed outside weights were called up to date."""
    folder = fake_model_dir("outside")
    outside = folder.parent / "w.safetensors"
    (folder / "model.safetensors").rename(outside)
    edit_json(folder, lambda doc: doc["weights"].__setitem__("file", "../w.safetensors"))
    out = tmp_path / "out"
    result = run_cli_inprocess(cli_args(cmu_crop, folder, out), capsys)
    assert_clean_error(result, "'weights.file' is '../w.safetensors'", "inside the model folder")
    assert_nothing_written(out)


def test_absolute_weights_path_is_refused(fake_model_dir, cmu_crop, tmp_path, capsys):
    folder = fake_model_dir("absolute")
    weights = folder / "model.safetensors"
    edit_json(folder, lambda doc: doc["weights"].__setitem__("file", str(weights)))
    out = tmp_path / "out"
    result = run_cli_inprocess(cli_args(cmu_crop, folder, out), capsys)
    # the message shortens a long value (a long TMPDIR makes this one long): its start is kept
    assert_clean_error(result, f"'weights.file' is '{str(weights)[:16]}", "relative")
    assert_nothing_written(out)


def test_weights_link_leading_outside_is_refused(fake_model_dir, cmu_crop, tmp_path, capsys):
    folder = fake_model_dir("link_out")
    outside = folder.parent / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    out = tmp_path / "out"
    result = run_cli_inprocess(cli_args(cmu_crop, folder, out), capsys)
    assert_clean_error(result, "model.safetensors", "leads outside the model folder", "copy")
    assert_nothing_written(out)


def test_missing_weights_file_named_in_the_json(fake_model_dir, cmu_crop, tmp_path, capsys):
    """A weights file the JSON names but the folder lacks: one line, not a traceback."""
    folder = fake_model_dir("missing_named")
    (folder / "model.safetensors").rename(folder / "w.safetensors")
    edit_json(folder, lambda doc: doc["weights"].__setitem__("file", "weights/w2.safetensors"))
    out = tmp_path / "out"
    result = run_cli_inprocess(cli_args(cmu_crop, folder, out), capsys)
    assert_clean_error(result, "weights/w2.safetensors", "is missing", "copy the whole model")
    assert_nothing_written(out)


def test_identity_is_the_hash_of_the_weights_loaded(
    fake_model_dir, other_weights, cmu_crop, tmp_path, capsys
):
    """Weights under another name inside the folder (a link to a file inside is fine), and
    no sha256 in the JSON to catch a swap: the identity follows the bytes actually loaded,
    so swapped weights are never "up to date"."""
    from wsi_segment.models.checksum import model_identity

    folder = fake_model_dir("renamed")
    (folder / "weights").mkdir()
    (folder / "model.safetensors").rename(folder / "weights" / "w.safetensors")
    (folder / "current.safetensors").symlink_to("weights/w.safetensors")

    def renamed(doc):
        doc["weights"]["file"] = "current.safetensors"
        doc["weights"].pop("sha256")

    edit_json(folder, renamed)
    out = tmp_path / "out"
    # torch: each weights file is a new model, which OpenVINO would export again
    torch = ("--runtime", "torch")
    first = run_cli_inprocess(cli_args(cmu_crop, folder, out, *torch), capsys)
    assert first.code == 0, first.stderr
    summary = assert_complete_output(out / cmu_crop.stem)
    weights = folder / "weights" / "w.safetensors"
    assert summary["model"]["sha256"] == model_identity(sha(folder / "model.json"), sha(weights))

    weights.write_bytes(other_weights.read_bytes())  # same architecture, other values
    again = run_cli_inprocess(cli_args(cmu_crop, folder, out, *torch), capsys)
    assert_clean_error(again, "different run", "--overwrite")
    redone = run_cli_inprocess(cli_args(cmu_crop, folder, out, *torch, "--overwrite"), capsys)
    assert redone.code == 0, redone.stderr
    summary = assert_complete_output(out / cmu_crop.stem)
    assert summary["model"]["sha256"] == model_identity(sha(folder / "model.json"), sha(weights))


def test_a_worker_loading_other_bytes_refuses_them(fake_model_dir):
    """A Dask worker loads the model again from disk: if the files changed since the run
    loaded them, it refuses rather than mixing two models in one slide."""
    from tests.conftest import torch_spec
    from wsi_segment.pipeline.inference.model_handle import ModelHandle

    folder = fake_model_dir("worker")
    spec = torch_spec("fp32")
    handle = ModelHandle(str(folder), "cpu", spec, identity="0" * 64)
    with pytest.raises(ModelError, match="model files changed during the run"):
        handle.get()
    model = ModelHandle(str(folder), "cpu", spec).get().model
    assert ModelHandle(str(folder), "cpu", spec, model.identity).get().model is model


# --- item 7: every key checked when model.json is read ---


def _set(path: str, value):
    def change(doc):
        *parents, last = path.split(".")
        for part in parents:
            doc = doc[part]
        doc[last] = value

    return change


BAD_KEYS = [
    ("weights", "model.safetensors", "an object"),
    ("architecture.classifier", ["resnet10t", "cam"], "an object"),
    ("format_version", "1", "an integer from 1 to 1"),
    ("normalisation", {"mean": "0.5", "std": "0.2"}, '"identity" or {"mean"'),
    ("architecture.segmenter.decoder_channels", 10**9, "an integer from 8 to 1024"),
    ("tile_size", 10**6, "an integer from 32 to 2048, a multiple of 16"),
    ("tile_size", 100, "an integer from 32 to 2048, a multiple of 16"),
    ("tile_size", 64.0, "an integer from 32 to 2048"),
    ("mpp", True, "a number in [0.01, 100]"),
    ("classes", "TE,NEC,LYM,TAS", "a list of 1 to 64 non-empty class names"),
    ("classes", [f"c{i}" for i in range(65)], "a list of 1 to 64"),
    ("gate_epsilon", "0.1", "a number in [0, 1)"),
    ("architecture.segmenter.output_stride", 4, "one of [8, 16]"),
    (
        "architecture.classifier.backbone.taps",
        "layer4",
        "a list of 1 to 4 stage names layer1..layer4",
    ),
    ("weights.sha256", "abc", "64 lowercase hex digits"),
    ("weights.dtype", "int8", "one of ['float32', 'float16']"),
    ("provenance", ["a"], "an object"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BAD_KEYS)
def test_each_bad_key_is_one_error_naming_key_value_and_what_is_allowed(
    fake_model_dir, key, value, allowed
):
    folder = fake_model_dir("bad_key")
    edit_json(folder, _set(key, value))
    with pytest.raises(ModelError) as refused:
        read_model_json(folder)
    message = str(refused.value)
    assert message.startswith(f"{folder / 'model.json'}: '{key}' is "), message
    assert repr(value)[:40] in message
    assert f"allowed: {allowed}" in message, message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("architecture.segmenter.encoder", "tu-hf-hub:timm/resnet18.a1_in1k"),
        ("architecture.segmenter.encoder", "tu-local-dir:/tmp/somewhere"),
        ("architecture.classifier.backbone.name", "hf-hub:timm/resnet10t.c3_in1k"),
        ("architecture.classifier.backbone.name", "timm/resnet10t"),
    ],
)
def test_an_encoder_that_would_download_is_refused_before_any_network_access(
    fake_model_dir, cmu_crop, tmp_path, capsys, key, value
):
    """Such a name made timm query the Hugging Face Hub (five requests, 50 s) before failing.
    Python's audit hooks see every socket the process opens or resolves: none may."""
    folder = fake_model_dir("download")
    edit_json(folder, _set(key, value))
    with pytest.raises(ModelError, match="would fetch files from outside the model folder"):
        read_model_json(folder)
    out = tmp_path / "out"
    with _sockets_seen() as seen:
        result = run_cli_inprocess(cli_args(cmu_crop, folder, out), capsys)
    assert_clean_error(result, f"'{key}' is '{value}'", "inference never does")
    assert_nothing_written(out)
    assert seen == [], seen


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("architecture.segmenter.decoder_channels", 10**9),
        ("tile_size", 10**6),
        ("architecture.classifier", ["resnet10t"]),
    ],
)
def test_bad_keys_through_the_cli_leave_nothing(
    fake_model_dir, cmu_crop, tmp_path, capsys, key, value
):
    folder = fake_model_dir("cli_bad_key")
    edit_json(folder, _set(key, value))
    out = tmp_path / "out"
    result = run_cli_inprocess(cli_args(cmu_crop, folder, out), capsys)
    assert_clean_error(result, "model.json", f"'{key}' is", "allowed:")
    assert_nothing_written(out)


class _sockets_seen:
    """Records socket events (connect, getaddrinfo, ...) raised in this process while
    active. Audit hooks cannot be removed, so the hook stays, idle, after the block."""

    active: list[str] | None = None
    installed = False

    def __enter__(self) -> list[str]:
        if not _sockets_seen.installed:
            sys.addaudithook(_sockets_seen._hook)
            _sockets_seen.installed = True
        _sockets_seen.active = []
        return _sockets_seen.active

    def __exit__(self, *exc) -> None:
        _sockets_seen.active = None

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        if _sockets_seen.active is not None and event.startswith("socket."):
            _sockets_seen.active.append(f"{event} {args!r:.120}")


def test_the_socket_recorder_sees_a_lookup():
    """Sanity check of the recorder: a name lookup does raise a socket audit event."""
    with _sockets_seen() as seen, contextlib.suppress(OSError):
        socket.getaddrinfo("localhost", 80)
    assert any(e.startswith("socket.getaddrinfo") for e in seen), seen


def test_a_refused_model_is_said_before_the_slide_is_read(fake_model_dir, tmp_path):
    """model.json and the weights file are checked before the slide is opened and tissue
    is detected (the model itself loads in the background later): a slide that could not
    even be opened does not hide the model's problem, nor do minutes of tissue detection."""
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.prepare import prepare

    folder = fake_model_dir("refused_early")
    edit_json(folder, lambda doc: doc.__setitem__("tile_size", "big"))
    not_a_slide = tmp_path / "empty.svs"
    not_a_slide.write_bytes(b"")
    params = SegmentParams(model_dir=str(folder), precision="fp32")
    with pytest.raises(ModelError, match="tile_size"):
        prepare(not_a_slide, tmp_path / "out", params)
    edit_json(folder, lambda doc: doc.__setitem__("tile_size", 64))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="is missing"):
        prepare(not_a_slide, tmp_path / "out", params)
