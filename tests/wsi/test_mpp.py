"""wsi_segment.wsi.mpp: one pixel-size range for the CLI, SegmentParams and open_slide."""

from __future__ import annotations

import argparse
import math

import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import ConfigError
from wsi_segment.flows.cli_segment import mpp_value
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.mpp import MPP_RANGE, mpp_problem
from wsi_segment.wsi.slide import open_slide

VALUES = (0.0, -0.5, 0.005, 0.01, 0.25, 100.0, 100.5, 999.0, math.nan, math.inf, -math.inf)


def test_the_range_and_its_message():
    assert MPP_RANGE == (0.01, 100.0)
    assert [v for v in VALUES if mpp_problem(v) is None] == [0.01, 0.25, 100.0]
    assert mpp_problem(0.005) == (
        "0.005 is out of range: micrometres per pixel must be in [0.01, 100] "
        "(0.25 at 40x, 0.5 at 20x)"
    )


def _refuses(check, value: float, error: type[Exception]) -> bool:
    try:
        check(value)
    except error:
        return True
    return False


@pytest.mark.parametrize("value", VALUES)
def test_every_door_refuses_the_same_values(value):
    """A value one door takes and another refuses would pass the CLI and fail in a flow."""
    expected = mpp_problem(value) is not None
    assert _refuses(lambda v: mpp_value(repr(v)), value, argparse.ArgumentTypeError) is expected
    assert _refuses(lambda v: SegmentParams(mpp=v), value, ConfigError) is expected
    assert _refuses(lambda v: open_slide(CMU_SLIDE, mpp=v).close(), value, ConfigError) is expected
