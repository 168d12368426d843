"""SegmentParams: validation at the door and fingerprint fields (the defaults of the speed
knobs are the run policy's: tests/pipeline/test_run_policy.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR as DATA
from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.params import SegmentParams


@pytest.mark.parametrize("field", ["threads", "batch_size", "chunk_tiles"])
def test_out_of_range_speed_knobs_are_refused(field):
    with pytest.raises(ConfigError, match=field.replace("_", " ")):
        SegmentParams(**{field: 0})


def test_speed_knobs_do_not_change_the_fingerprint():
    base = SegmentParams().fingerprint_fields()
    assert SegmentParams(threads=7, batch_size=3, chunk_tiles=2).fingerprint_fields() == base
    assert SegmentParams(overlap=16).fingerprint_fields() != base


def test_precision_request_changes_the_fingerprint():
    """`auto` may run bf16 (decided during the run); `fp32` asks for the exact reference."""
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.pipeline.outputs.run_identity import run_fingerprint

    auto, fp32 = SegmentParams(precision="auto"), SegmentParams(precision="fp32")
    assert auto.fingerprint_fields()["precision"] == "auto"
    assert fp32.fingerprint_fields() == auto.fingerprint_fields() | {"precision": "fp32"}
    meta = ModelMeta("m", ["A"], [(1, 2, 3)], mpp=1.0, tile_size=64)
    slide = str(DATA / "small.svs")
    assert run_fingerprint(slide, "h", auto, meta) != run_fingerprint(slide, "h", fp32, meta)
    same = SegmentParams(precision="fp32", threads=3)
    assert run_fingerprint(slide, "h", same, meta) == run_fingerprint(slide, "h", fp32, meta)


def test_summary_records_the_options_as_plain_json():
    """summary.json's `parameters`: every option, paths as strings, and no free-form
    `extra` dict (nothing read it, so recording it only misled)."""
    params = SegmentParams(model_dir=Path("m"), roi=Path("r.geojson"), overlap=16)
    data = json.loads(json.dumps(params.as_dict()))
    # every option but `origin` (how the run started, recorded as summary.json `command`),
    # `extra_outputs` as one true/false key per optional output (pipeline.output_files)
    names = [f.name for f in dataclasses.fields(SegmentParams) if f.name != "origin"]
    at = names.index("extra_outputs")
    assert list(data) == [*names[:at], "ome_tiff", "tile_objects", *names[at + 1 :]]
    assert "extra" not in data
    assert data["model_dir"] == "m" and data["roi"] == "r.geojson" and data["overlap"] == 16


def test_decoders_and_writers_stay_out_of_the_fingerprint():
    assert SegmentParams(decoders=4).fingerprint_fields() == SegmentParams().fingerprint_fields()
    with pytest.raises(ConfigError, match=r"decoders must be an integer in \[0, 256\]"):
        SegmentParams(decoders=-1)
    assert SegmentParams(writers=3).fingerprint_fields() == SegmentParams().fingerprint_fields()
    with pytest.raises(ConfigError, match=r"writers must be an integer in \[1, 64\]"):
        SegmentParams(writers=0)


def test_runtime_is_checked_and_a_non_torch_request_changes_the_fingerprint():
    """torch ran every run before the runtime existed: their fingerprints stay theirs; auto
    and openvino may give other bytes (bf16, fp32 summed in another order), so they differ."""
    assert SegmentParams().runtime == "auto"
    torch_fields = SegmentParams(runtime="torch").fingerprint_fields()
    assert "runtime" not in torch_fields
    assert SegmentParams().fingerprint_fields() == torch_fields | {"runtime": "auto"}
    assert SegmentParams(runtime="openvino").fingerprint_fields()["runtime"] == "openvino"
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        SegmentParams(runtime="tensorrt")
