"""SegmentParams: validation at the door, fingerprint fields, the default thread count."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR as DATA
from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.params import (
    SegmentParams,
    gpu_expected,
    plan_chunk_tiles,
    run_batch_size,
    run_threads,
)


def test_threads_default_follows_the_device():
    assert SegmentParams().threads is None
    assert run_threads(None, "cpu") == 2  # two forward passes side by side on the CPU
    assert run_threads(None, "cuda") == 1  # one owner of the GPU's model
    assert run_threads(3, "cuda") == 3 and run_threads(5, "cpu") == 5


@pytest.mark.parametrize("field", ["threads", "batch_size", "chunk_tiles"])
def test_out_of_range_speed_knobs_are_refused(field):
    with pytest.raises(ConfigError, match=field.replace("_", " ")):
        SegmentParams(**{field: 0})


def test_speed_knobs_do_not_change_the_fingerprint():
    base = SegmentParams().fingerprint_fields()
    assert SegmentParams(threads=7, batch_size=3, chunk_tiles=2).fingerprint_fields() == base
    assert SegmentParams(overlap=16).fingerprint_fields() != base


def test_batch_and_chunk_defaults_follow_the_device():
    assert SegmentParams().batch_size is None and SegmentParams().chunk_tiles is None
    assert run_batch_size(None, "cpu") == 16 and run_batch_size(None, "cuda") == 64
    assert run_batch_size(5, "cuda") == 5
    assert not gpu_expected("cpu") and gpu_expected("cuda")
    assert gpu_expected("auto") == os.path.exists("/dev/nvidiactl")
    assert plan_chunk_tiles(SegmentParams(device="cpu")) == 4
    assert plan_chunk_tiles(SegmentParams(device="cuda")) == 8  # 64 tiles: one GPU batch
    assert plan_chunk_tiles(SegmentParams(device="cuda", chunk_tiles=3)) == 3


def test_precision_request_changes_the_fingerprint():
    """`auto` may run bf16 (decided during the run); `fp32` asks for the exact reference."""
    from wsi_segment.models.meta import ModelMeta
    from wsi_segment.pipeline.outputs.output_dir import run_fingerprint

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
    # every option but `origin` (how the run started, recorded as summary.json `command`)
    assert list(data) == [f.name for f in dataclasses.fields(SegmentParams) if f.name != "origin"]
    assert "extra" not in data
    assert data["model_dir"] == "m" and data["roi"] == "r.geojson" and data["overlap"] == 16


def test_decoders_default_by_device_and_stay_out_of_the_fingerprint():

    from wsi_segment.pipeline.params import SegmentParams, run_decoders

    cores = len(os.sched_getaffinity(0))
    assert run_decoders(None, "cpu") == 0  # the reader thread is the CPU default
    assert run_decoders(None, "cuda") == max(1, min(16, cores - 1))
    assert run_decoders(3, "cpu") == 3 and run_decoders(0, "cuda") == 0
    assert SegmentParams(decoders=4).fingerprint_fields() == SegmentParams().fingerprint_fields()
    with pytest.raises(ConfigError, match=r"decoders must be an integer in \[0, 256\]"):
        SegmentParams(decoders=-1)


def test_writers_take_the_cores_the_decoders_leave():
    from wsi_segment.pipeline.params import WRITERS_MAX, SegmentParams, run_writers

    assert run_writers(None, decoders=15, cores=16) == 1  # GPU default: decoders take them
    assert run_writers(None, decoders=4, cores=16) == WRITERS_MAX == 4  # GIL-bound beyond
    assert run_writers(None, decoders=1, cores=3) == 2
    assert run_writers(None, decoders=2, cores=2) == 1  # never none
    assert run_writers(6, decoders=15, cores=16) == 6  # --writers wins
    assert SegmentParams(writers=3).fingerprint_fields() == SegmentParams().fingerprint_fields()
    with pytest.raises(ConfigError, match=r"writers must be an integer in \[1, 64\]"):
        SegmentParams(writers=0)


def test_slides_in_flight_share_the_machine_s_decoders():
    """A batch on one GPU machine: each slide in flight gets its share of `run_decoders`'
    count (at least one), so two slides never spawn 2 x (cores - 1) decoders."""
    from wsi_segment.pipeline.params import run_decoders, shared_decoders

    assert shared_decoders(None, "cuda", slides=2, cores=16) == 7  # 15 // 2: 14 + 2 consumers
    assert shared_decoders(None, "cuda", slides=3, cores=16) == 5
    assert shared_decoders(None, "cuda", slides=1, cores=16) == 15
    assert shared_decoders(None, "cuda", slides=2, cores=64) == 8  # the 16 cap, shared
    assert shared_decoders(None, "cuda", slides=4, cores=2) == 1  # never none: one each
    assert shared_decoders(None, "cuda", slides=2, cores=1) == 1
    assert shared_decoders(None, "cpu", slides=2, cores=16) == 0  # the CPU keeps its threads
    assert shared_decoders(5, "cuda", slides=2, cores=16) == 5  # --decoders wins
    assert shared_decoders(0, "cuda", slides=2, cores=16) == 0
    for device_type in ("cpu", "cuda"):  # one slide alone: the single-slide rule
        assert shared_decoders(None, device_type, slides=1) == run_decoders(None, device_type)


def test_backend_choices_are_the_readers_wsi_has():
    """The options name the backends without importing them (a quick CLI start): the two
    lists must not drift apart."""
    from wsi_segment.pipeline.params import BACKENDS
    from wsi_segment.wsi.backends import BACKENDS as READERS

    assert ("auto", *READERS) == BACKENDS


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
