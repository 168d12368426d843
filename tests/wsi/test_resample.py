"""torch's vectorised reduction gives PIL's bytes wherever `wsi.resample` lets it run, and PIL
runs everywhere else: random pixels and real slide pixels, every power-of-two scale the
reads use, boxes at every alignment."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import CMU_SLIDE
from wsi_segment.wsi.region_reader import level_read_box
from wsi_segment.wsi.resample import _fast_resample, pil_resample, resample_box
from wsi_segment.wsi.slide import open_slide

# torch's uint8 antialiased kernel is vectorised for these CPU capabilities; elsewhere the
# check against PIL may refuse it, which is allowed (PIL runs), so only here must it run.
VECTORISED = torch.backends.cpu.get_cpu_capability() in {"AVX2", "AVX512"}


def _read_box(box: tuple[int, int, int, int], k: int) -> tuple[int, int, int, int]:
    return level_read_box(box, float(k), 1.0)  # the level box a read takes, margin included


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("shape", [(40, 40), (9, 50), (50, 9)], ids=["square", "wide", "tall"])
def test_whole_scale_gives_pils_bytes_on_random_pixels(k, shape):
    """Boxes at several offsets (so both the zero-copy and the copied column cut run), square,
    wide and tall: every byte is PIL's."""
    rng = np.random.default_rng(k * 100 + shape[0])
    h, w = shape
    for x0, y0 in [(0, 0), (3, 7), (-5, 2), (11, -13)]:
        box = (x0, y0, x0 + w, y0 + h)
        lx0, ly0, lx1, ly1 = _read_box(box, k)
        src = rng.integers(0, 256, (ly1 - ly0, lx1 - lx0, 3), dtype=np.uint8)
        expected = pil_resample(src, box, float(k), (lx0, ly0))
        np.testing.assert_array_equal(resample_box(src, box, k, (lx0, ly0)), expected)
        fast = _fast_resample(src, box, k, (lx0, ly0))
        if VECTORISED:
            assert fast is not None  # the fast path ran, and was compared above
        if fast is not None:
            np.testing.assert_array_equal(fast, expected)


@pytest.mark.parametrize("k", [2, 4])
def test_whole_scale_gives_pils_bytes_on_real_slide_pixels(k):
    """A 384 x 256 model px box of the CMU slide's tissue, from its level 0."""
    box = (100, 80, 484, 336)
    lx0, ly0, lx1, ly1 = _read_box(box, k)
    with open_slide(CMU_SLIDE, backend="tiffslide") as slide:
        src = slide.read_region((lx0, ly0), 0, (lx1 - lx0, ly1 - ly0))
    expected = pil_resample(src, box, float(k), (lx0, ly0))
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 1000  # tissue, not blank
    got = resample_box(src, box, k, (lx0, ly0))
    np.testing.assert_array_equal(got, expected)
    assert (_fast_resample(src, box, k, (lx0, ly0)) is not None) or not VECTORISED


@pytest.mark.parametrize("k", [3, 5, 6, 2.004008016032064])
def test_scales_whose_weights_are_not_exact_stay_with_pil(k):
    """At k = 3 torch's fixed point rounds some pixels 1 away from PIL's, and at a scale that
    is not whole PIL's weights depend on the box: never used there."""
    box = (0, 0, 30, 30)
    lx0, ly0, lx1, ly1 = _read_box(box, k)
    rng = np.random.default_rng(int(k))
    src = rng.integers(0, 256, (ly1 - ly0, lx1 - lx0, 3), dtype=np.uint8)
    assert _fast_resample(src, box, k, (lx0, ly0)) is None
    np.testing.assert_array_equal(
        resample_box(src, box, k, (lx0, ly0)), pil_resample(src, box, float(k), (lx0, ly0))
    )


def test_a_box_whose_taps_reach_the_edge_stays_with_pil():
    """Without the margin the first model pixel's taps leave `src`: PIL clips and reweights
    them there, torch would too but differently placed, so the fast path declines."""
    src = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert _fast_resample(src, (0, 0, 20, 20), 2, (0, 0)) is None


def test_resampling_never_imports_torch():
    """The decoder processes import the read code without torch: a read at a whole scale
    there runs PIL and leaves torch unimported."""
    code = (
        "import sys, numpy as np\n"
        "from wsi_segment.wsi.resample import resample_box\n"
        "src = np.zeros((24, 24, 3), np.uint8)\n"
        "out = resample_box(src, (4, 4, 8, 8), 2, (0, 0))\n"
        "print(out.shape, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["(4,", "4,", "3)", "False"]


def test_read_only_pixels_are_resampled_without_a_warning(recwarn):
    """A reader may hand out read-only arrays; torch would warn about one on every run."""
    box = (0, 0, 16, 16)
    lx0, ly0, lx1, ly1 = _read_box(box, 2)
    src = np.random.default_rng(1).integers(0, 256, (ly1 - ly0, lx1 - lx0, 3), dtype=np.uint8)
    src.flags.writeable = False
    got = resample_box(src, box, 2, (lx0, ly0))
    np.testing.assert_array_equal(got, pil_resample(src, box, 2.0, (lx0, ly0)))
    assert not [w for w in recwarn if "not writable" in str(w.message)]
