"""SegmentParams: validation at the door, fingerprint fields, the default thread count."""

from __future__ import annotations

import os

import pytest

from pipeline.params import SegmentParams, run_threads
from wsi.errors import ConfigError


def test_threads_default_follows_the_device():
    assert SegmentParams().threads is None
    assert run_threads(None, "cpu") == 2  # two model streams on the CPU
    assert run_threads(None, "cuda") == max(4, min(16, os.cpu_count() or 4))
    assert run_threads(3, "cuda") == 3 and run_threads(5, "cpu") == 5


@pytest.mark.parametrize("field", ["threads", "batch_size", "chunk_tiles"])
def test_out_of_range_speed_knobs_are_refused(field):
    with pytest.raises(ConfigError, match=field.replace("_", " ")):
        SegmentParams(**{field: 0})


def test_speed_knobs_do_not_change_the_fingerprint():
    base = SegmentParams().fingerprint_fields()
    assert SegmentParams(threads=7, batch_size=3, chunk_tiles=2).fingerprint_fields() == base
    assert SegmentParams(overlap=16).fingerprint_fields() != base
