"""Known failures without Prefect: which failures are recorded, what a record holds, and
which changes (slide, model, parameters) make a recorded slide run again."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR
from wsi_segment.pipeline.batch_inputs import BatchItem
from wsi_segment.pipeline.known_failures import (
    KNOWN,
    known_failures,
    recurs,
    settle_records,
)
from wsi_segment.pipeline.outputs.failure_record import read_record, record_path
from wsi_segment.pipeline.outputs.run_identity import run_fingerprint
from wsi_segment.pipeline.params import RunOrigin, SegmentParams
from wsi_segment.pipeline.segment import SlideResult
from wsi_segment.pipeline.up_to_date import model_files

MESSAGE = "not a readable slide"


@pytest.mark.parametrize(
    ("name", "recorded"),
    [
        ("SlideError", True),
        ("MppMissingError", True),
        ("RoiError", True),
        ("DecoderDied", False),  # a decoder killed for memory looks like a damaged file
        ("TooManyOpenFiles", False),  # the open-file limit, not the slide
        ("ClusterLost", False),  # the Dask client or scheduler, not the slide
        ("OutOfMemory", False),  # the machine's memory or ulimit -v, not the slide
        ("OutputError", False),  # a full disk, a lock held: the environment, not the slide
        ("ModelError", False),  # every slide would fail: fix the model
        ("ConfigError", False),
        ("DatasetError", False),
        ("ValueError", False),  # an internal error: a bug is retried and stays loud
        ("Terminated", False),
        ("", False),
        (None, False),
    ],
)
def test_only_errors_that_recur_with_the_slide_are_recorded(
    name: str | None, recorded: bool
) -> None:
    assert recurs(name) is recorded


def _failed(slide: Path, error_class: str = "SlideError") -> SlideResult:
    return SlideResult(str(slide), "failed", None, {}, f"{slide}: {MESSAGE}", 0.01, error_class)


def test_a_recorded_failure_is_known_until_slide_model_or_params_change(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    slide = tmp_path / "in" / "bad.svs"
    slide.parent.mkdir()
    shutil.copy2(DATA_DIR / "broken.svs", slide)
    out = str(tmp_path / "out")
    os.mkdir(out)
    items = [BatchItem(str(slide), None, "bad")]
    origin = RunOrigin(("wsi-segment", "batch"), {"flow_run_id": "run-1", "deployment": None})
    params = SegmentParams(model_dir=tiny_model_dir, precision="fp32", origin=origin)
    model = model_files(params)
    assert model is not None

    assert known_failures(items, out, params, model) == {}  # nothing recorded yet
    results, problems = settle_records(items, [_failed(slide)], out, params, model)
    assert problems == [] and results[0].known_since is None  # a new failure
    record = read_record(out, "bad")
    assert record is not None
    stat = slide.stat()
    assert record["slide"] == {
        "path": str(slide.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    assert record["model"] == {"identity": model[0], "name": model[1].name}
    assert record["params"] == params.fingerprint_fields()
    assert record["fingerprint"] == run_fingerprint(str(slide), model[0], params, model[1])
    assert record["error_class"] == "SlideError"
    assert record["message"] == f"{slide}: {MESSAGE}"
    assert record["since_utc"] == record["failed_utc"]
    assert record["run"] == {"flow_run_id": "run-1", "deployment": None}
    assert record["command"] == ["wsi-segment", "batch"]

    # same slide, model and parameters: known, with the record's date and error
    [(index, known)] = known_failures(items, out, params, model).items()
    assert index == 0 and known.status == KNOWN
    assert known.known_since == record["since_utc"] and known.error == record["message"]
    assert known.error_class == "SlideError" and known.seconds > 0
    assert known_failures(items, out, params, model, skip={0}) == {}
    # another run's origin is not a parameter
    assert known_failures(items, out, dataclasses.replace(params, origin=None), model)

    # other parameters, another model, no model identity: the slide runs
    assert known_failures(items, out, dataclasses.replace(params, overlap=16), model) == {}
    other_model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, other_model)
    doc = json.loads((other_model / "model.json").read_text())
    doc["name"] = "tiny-retrained"
    (other_model / "model.json").write_text(json.dumps(doc))
    other = model_files(dataclasses.replace(params, model_dir=other_model))
    assert other is not None and other[0] != model[0]
    assert known_failures(items, out, params, other) == {}
    assert known_failures(items, out, params, None) == {}

    # the slide touched (same bytes, new mtime): the slide runs
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert known_failures(items, out, params, model) == {}
    os.utime(slide, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert 0 in known_failures(items, out, params, model)


def test_settling_a_batch_keeps_since_clears_on_success_and_skips_other_errors(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    slide = tmp_path / "bad.svs"
    shutil.copy2(DATA_DIR / "broken.svs", slide)
    out = str(tmp_path)
    items = [BatchItem(str(slide), None, "bad")]
    params = SegmentParams(model_dir=tiny_model_dir, precision="fp32")
    model = model_files(params)
    assert model is not None
    path = record_path(out, "bad")

    # errors that say nothing about the slide are not recorded
    for error_class in ("OutputError", "ModelError", "ValueError"):
        settle_records(items, [_failed(slide, error_class)], out, params, model)
        assert not path.exists()
    settle_records(items, [_failed(slide)], out, params, None)  # no model identity
    assert not path.exists()

    settle_records(items, [_failed(slide)], out, params, model)
    first = read_record(out, "bad")
    assert first is not None
    first = {**first, "since_utc": "2026-01-02T03:04:05Z"}  # as if written long ago
    path.write_text(json.dumps(first))
    # retried on request and failed again: the record keeps its date, the result says so
    [again], problems = settle_records(items, [_failed(slide)], out, params, model)
    assert problems == [] and again.known_since == "2026-01-02T03:04:05Z"
    second = read_record(out, "bad")
    assert second is not None and second["since_utc"] == "2026-01-02T03:04:05Z"
    # an error that says nothing about the slide leaves the record as it is
    settle_records(items, [_failed(slide, "OutputError")], out, params, model)
    assert read_record(out, "bad") == second
    # the known failure itself changes nothing
    known = known_failures(items, out, params, model)[0]
    settle_records(items, [known], out, params, model)
    assert read_record(out, "bad") == second
    # a success (or an up-to-date output) removes it
    for status in ("done", "up-to-date"):
        settle_records(items, [_failed(slide)], out, params, model)
        assert path.exists()
        finished = SlideResult(str(slide), status, tmp_path / "bad", {}, None, 1.0)
        results, problems = settle_records(items, [finished], out, params, model)
        assert results == [finished] and problems == [] and not path.exists()


def test_a_file_in_the_way_is_reported_and_kept(tmp_path: Path, tiny_model_dir: Path) -> None:
    slide = tmp_path / "bad.svs"
    shutil.copy2(DATA_DIR / "broken.svs", slide)
    out = str(tmp_path)
    items = [BatchItem(str(slide), None, "bad")]
    params = SegmentParams(model_dir=tiny_model_dir, precision="fp32")
    model = model_files(params)
    path = record_path(out, "bad")
    path.write_text("a person's notes\n")
    _, problems = settle_records(items, [_failed(slide)], out, params, model)
    assert problems == [
        f"{path} is in the way (it is not a failure record wsi-segment wrote); left as it is"
    ]
    finished = SlideResult(str(slide), "done", tmp_path / "bad", {}, None, 1.0)
    settle_records(items, [finished], out, params, model)
    assert path.read_text() == "a person's notes\n"
    assert known_failures(items, out, params, model) == {}
