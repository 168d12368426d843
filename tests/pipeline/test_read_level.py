"""`--read-level`: a 40x-like scan of real tissue (the CMU slide's pixels written as an Aperio
pyramid declared at 0.252 um/px) read from level 0 (`finer`, the default) or from its 4x level
(`serving`), summary.json saying which level, its mpp and the resample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide
from wsi_segment.synthetic.slides import write_aperio_pyramid
from wsi_segment.wsi.slide import open_slide

MPP_40X = 0.252  # an Aperio 40x scan's pixel size
MODEL_MPP = 1.0  # the demo model's


@pytest.fixture(scope="module")
def scan_40x(tmp_path_factory):
    """Real tissue as an Aperio-like 40x pyramid (levels 1 and 4, box averages)."""
    with open_slide(CMU_SLIDE) as slide:
        rgb = slide.read_region((0, 0), 0, slide.dimensions)
    path = tmp_path_factory.mktemp("scan") / "cmu-40x.svs"
    return write_aperio_pyramid(path, rgb[:1200, :1400], mpp=MPP_40X)


def test_the_level_that_serves_is_read_and_recorded(scan_40x, tmp_path):
    """`serving` reads the 4x level (0.8 % coarser than the model's pixels, upsampled by the
    resample), `finer` would read level 0: summary.json says the level, its mpp and scale."""
    with open_slide(scan_40x) as slide:
        ds = slide.level_downsamples[1]
    assert ds == pytest.approx(4.0, abs=0.01)
    params = SegmentParams(device="cpu", runtime="torch", precision="fp32", read_level="serving")
    result = segment_slide(scan_40x, tmp_path, params)
    assert result.status == "done"
    slide_section = json.loads((result.out_dir / "summary.json").read_text())["slide"]
    assert slide_section["read_level"] == 1
    assert slide_section["read_level_mpp"] == {"x": MPP_40X * ds, "y": MPP_40X * ds}
    assert slide_section["read_scale"] == pytest.approx(MODEL_MPP / MPP_40X / ds)
    assert slide_section["read_scale"] < 1  # a slight upsample, within the tolerance
    assert 1 / slide_section["read_scale"] - 1 < 0.02


def test_the_read_level_is_part_of_a_runs_identity():
    """`serving` reads other pixels than earlier runs: its outputs never stand in for
    `finer`'s (the default, the read of every earlier run, whose fingerprint stays)."""
    finer, serving = SegmentParams(), SegmentParams(read_level="serving")
    assert finer.read_level == "finer" and "read_level" not in finer.fingerprint_fields()
    assert serving.fingerprint_fields()["read_level"] == "serving"
    assert serving.read_tolerance > finer.read_tolerance
    with pytest.raises(ConfigError, match="unknown read level 'coarse'; choose one of finer"):
        SegmentParams(read_level="coarse")


def test_the_pyramid_holds_the_real_pixels(scan_40x):
    """The test scan's level 0 is the CMU slide's pixels (JPEG-recompressed) and its 4x level
    their 4 x 4 means: a scanner's pyramid of real tissue, not synthetic texture."""
    with open_slide(CMU_SLIDE) as cmu, open_slide(scan_40x) as scan:
        real = cmu.read_region((0, 0), 0, (1400, 1200)).astype(np.int16)
        level0 = scan.read_region((0, 0), 0, (1400, 1200)).astype(np.int16)
        assert scan.vendor == "aperio" and scan.mpp == (MPP_40X, MPP_40X)
    assert np.abs(level0 - real).mean() < 3  # JPEG at quality 90
