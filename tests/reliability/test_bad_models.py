"""Bad model folders through the CLI: one clear `error:` line, exit 1, nothing written.

A pickle renamed model.safetensors must be refused without ever being unpickled: its
payload creates a marker file when loaded, and the marker must not exist afterwards.
"""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from tests.conftest import DATA_DIR
from tests.reliability.conftest import assert_clean_error, assert_nothing_written, run_cli_inprocess

SLIDE = DATA_DIR / "small.svs"


class Payload:
    """Unpickling this creates (opens for writing) the marker file: proof of execution."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def edit_json(folder, change) -> None:
    path = folder / "model.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def run(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli_inprocess([SLIDE, "--model", model_dir, "--out", out, "--quiet"], capsys)
    return result, out


def test_payload_really_runs_when_unpickled(tmp_path):
    """Sanity check of the test itself: pickle.loads does execute the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_missing_model_folder(tmp_path, capsys):
    result, out = run(tmp_path / "no_such_model", tmp_path, capsys)
    assert_clean_error(result, "no_such_model", "--model")
    assert_nothing_written(out)


def test_model_folder_is_a_file(tmp_path, capsys):
    path = tmp_path / "model.json"
    path.write_text("{}")
    result, out = run(path, tmp_path, capsys)
    assert_clean_error(result, "model.json", "--model")
    assert_nothing_written(out)


def test_json_without_weights(fake_model_dir, tmp_path, capsys):
    folder = fake_model_dir("json_only")
    (folder / "model.safetensors").unlink()
    result, out = run(folder, tmp_path, capsys)
    assert_clean_error(result, "model.safetensors", "is missing", "copy the whole model folder")
    assert_nothing_written(out)


def test_weights_without_json(fake_model_dir, tmp_path, capsys):
    folder = fake_model_dir("weights_only")
    (folder / "model.json").unlink()
    result, out = run(folder, tmp_path, capsys)
    assert_clean_error(result, "model.json", "is missing")
    assert_nothing_written(out)


def test_json_is_not_json(fake_model_dir, tmp_path, capsys):
    folder = fake_model_dir("bad_json")
    (folder / "model.json").write_text('{"format": "wsi-segment-model", "classes": [')
    result, out = run(folder, tmp_path, capsys)
    assert_clean_error(result, "model.json", "not valid JSON")
    assert_nothing_written(out)


def test_weights_do_not_match_the_json(fake_model_dir, tmp_path, capsys):
    """The JSON says 5 classes (with 5 colours); the weights were trained for 4."""
    folder = fake_model_dir("mismatch")

    def five_classes(doc):
        doc["classes"] = [*doc["classes"], "EXTRA"]
        doc["colors"] = [*doc["colors"], [1, 2, 3]]
        for part in ("classifier", "segmenter"):
            doc["architecture"][part]["num_classes"] = 5

    edit_json(folder, five_classes)
    result, out = run(folder, tmp_path, capsys)
    assert_clean_error(result, "model.safetensors", "does not match model.json", "wrong shape")
    assert_nothing_written(out)


def test_weights_replaced_after_saving(fake_model_dir, tmp_path, capsys):
    folder = fake_model_dir("replaced")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    (folder / "model.safetensors").write_bytes(bytes(data))
    result, out = run(folder, tmp_path, capsys)
    assert_clean_error(result, "model.safetensors", "sha256", "re-save")
    assert_nothing_written(out)


@pytest.mark.parametrize("keep_sha", [True, False], ids=["sha-in-json", "sha-removed"])
@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_pickle_renamed_safetensors_is_refused_never_run(
    fake_model_dir, tmp_path, capsys, keep_sha, container
):
    folder = fake_model_dir(f"pickle_{container}_{keep_sha}")
    marker = tmp_path / "payload_ran"
    weights = folder / "model.safetensors"
    if container == "pickle":
        weights.write_bytes(pickle.dumps({"state": Payload(marker)}))
    else:
        import torch

        torch.save({"state_dict": Payload(marker)}, weights)
    assert not marker.exists()
    if not keep_sha:  # make the sha check pass so the safetensors parser must refuse it

        def drop_sha(doc):
            doc["weights"].pop("sha256")

        edit_json(folder, drop_sha)
    result, out = run(folder, tmp_path, capsys)
    fix = "sha256" if keep_sha else "pickled checkpoints"
    assert_clean_error(result, "model.safetensors", fix)
    assert not marker.exists(), "the pickle was executed"
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda doc: doc.pop("colors"), "missing 'colors'"),
        (lambda doc: doc.__setitem__("colors", doc["colors"][:3]), "4 classes but 3 colours"),
        (lambda doc: doc.__setitem__("colors", None), "'colors' is None"),
        (lambda doc: doc.__setitem__("colors", [[300, 0, 0]] * 4), "[r, g, b]"),
    ],
    ids=["no-colors", "too-few-colors", "null-colors", "bad-colour"],
)
def test_classes_without_colours(fake_model_dir, tmp_path, capsys, change, words):
    folder = fake_model_dir("colours")
    edit_json(folder, change)
    result, out = run(folder, tmp_path, capsys)
    assert_clean_error(result, "model.json", words)
    assert_nothing_written(out)


def test_weights_path_is_a_directory(fake_model_dir, tmp_path, capsys):
    """A weights path that is a directory (a botched copy) is a clear model error."""
    folder = fake_model_dir("weights_dir")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    result, out = run(folder, tmp_path, capsys)
    assert_clean_error(result, "model.safetensors")
    assert_nothing_written(out)
    shutil.rmtree(folder)
