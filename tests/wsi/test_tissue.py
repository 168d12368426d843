"""wsi_segment.wsi.tissue.detect_tissue on the real CMU slide and on slides written here with tifffile.

Measured: tissue covers 0.361 of CMU-1-Small-Region (same with both backends; mask 1110 x
1484 px at downsample 2). The corpus of stainings, pens and edges is in test_tissue_corpus.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from tests.conftest import CMU_SLIDE, DATA_DIR
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tissue import (
    BAND_ROWS,
    DARK_MAX,
    OD_CLAMP,
    SAT_CLAMP,
    _cleaned,
    _planes,
    box3,
    detect_tissue,
    drop_small,
    otsu,
    tissue_mask_from_rgb,
)


def write_slide(path, image: np.ndarray, mpp: float | None = 0.5, jpeg: bool = True):
    """A tiled TIFF (openslide: generic-tiff) with mpp in its resolution tags."""
    kwargs = {}
    if mpp is not None:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(
        path,
        image,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg" if jpeg else None,
        **kwargs,
    )
    return path


@pytest.fixture(scope="module")
def cmu_pixels() -> np.ndarray:
    with open_slide(CMU_SLIDE) as slide:
        return slide.read_region((0, 0), 0, slide.dimensions)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_tissue_on_cmu(backend):
    with open_slide(CMU_SLIDE, backend) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.dtype == bool and tissue.mask.shape == (1484, 1110)
    assert tissue.downsample == 2.0
    assert 0.30 < tissue.fraction < 0.40  # measured 0.361
    polys = tissue.polygons
    assert polys.is_valid and not polys.is_empty
    minx, miny, maxx, maxy = polys.bounds
    assert minx >= 0 and miny >= 0 and maxx <= 2220 and maxy <= 2967
    # exact polygons: their area is the mask's, in level-0 px
    assert polys.area == pytest.approx(tissue.mask.sum() * 4.0, rel=0.002)
    assert tissue.params["units"] == "um2"
    assert tissue.params["min_area_px"] == pytest.approx(20_000 / (2 * 0.499) ** 2)


def test_blank_slide_has_no_tissue(tmp_path):
    path = write_slide(tmp_path / "blank.tif", np.full((1000, 1500, 3), 255, np.uint8))
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx((0.5, 0.5))  # from the resolution tags
        tissue = detect_tissue(slide)
    assert tissue.fraction == 0.0 and not tissue.mask.any()
    assert tissue.polygons.is_empty
    # off-white glass with a little noise is not tissue either
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(235, 4, (1000, 1500, 3)), 0, 255).astype(np.uint8)
    with open_slide(write_slide(tmp_path / "glass.tif", glass)) as slide:
        assert detect_tissue(slide).fraction == 0.0


def test_drop_small_counts_8_connected_pixels_and_can_keep_border_pieces():
    """The size filter detection and the synthetic slides share: a diagonal pair is one
    component of 2; with keep_border, pieces touching the edge stay whatever their size."""
    mask = np.zeros((6, 7), bool)
    mask[0, 0] = True  # 1 px on the border
    mask[2, 2] = mask[3, 3] = True  # 2 px, 8-connected
    mask[1:4, 5:7] = True  # 6 px touching the right border
    assert drop_small(mask, 1) is mask  # nothing can be smaller than 1 px
    expected = mask.copy()
    expected[0, 0] = False
    np.testing.assert_array_equal(drop_small(mask, 2), expected)
    kept = drop_small(mask, 3)
    assert kept.sum() == 6 and kept[1:4, 5:7].all()
    with_border = drop_small(mask, 3, keep_border=True)
    assert with_border.sum() == 7 and with_border[0, 0] and not with_border[2, 2]
    assert not drop_small(mask, 7).any()


def test_size_filters_are_in_micrometres(tmp_path):
    """At 0.5 um/px: a 200 um square piece (40,000 um2) stays, a 30 um speck (900 um2)
    goes; a 20 um hole (400 um2) is filled, a 100 um hole (10,000 um2) is kept."""
    img = np.full((1000, 1500, 3), 255, np.uint8)
    pink = (200, 110, 170)
    img[100:500, 100:500] = pink  # 400 x 400 px piece ...
    img[280:320, 280:320] = 255  # ... with a 40 x 40 px hole
    img[700:760, 200:260] = pink  # 60 x 60 px speck
    img[500:800, 800:1300] = pink  # 500 x 300 px piece ...
    img[550:750, 950:1150] = 255  # ... with a 200 x 200 px hole
    path = write_slide(tmp_path / "pieces.tif", img, jpeg=False)
    with open_slide(path) as slide:
        tissue = detect_tissue(slide)
    assert tissue.downsample == 1.0
    polys = sorted(tissue.polygons.geoms, key=lambda p: p.bounds[0])
    assert len(polys) == 2
    assert polys[0].area == 400 * 400 and len(polys[0].interiors) == 0
    assert polys[1].area == 500 * 300 - 200 * 200 and len(polys[1].interiors) == 1
    # the same slide at 2 um/px: the speck is 14,400 um2 but still under 20,000; a smaller
    # min area keeps it
    with open_slide(path, mpp=2.0) as slide:
        assert len(detect_tissue(slide, min_area_um2=10_000).polygons.geoms) == 3


def test_pen_marks_and_dark_edges_are_not_tissue(tmp_path, cmu_pixels):
    img = cmu_pixels.copy()
    h, w = img.shape[:2]
    edges = np.zeros((h, w), bool)
    edges[:, :60] = edges[:, -60:] = edges[:80] = True
    img[:, :60], img[:, -60:], img[:80] = 15, 30, 20  # black / dark grey slide edges
    yy, xx = np.mgrid[0:h, 0:w]
    blue = np.abs((yy - 0.6 * xx) - 300) < 25  # diagonal blue marker over glass and tissue
    green = (np.abs(xx - 300) < 20) & (yy > 1500)  # green marker on glass
    img[blue] = (40, 80, 170)
    img[green] = (40, 140, 60)
    with open_slide(CMU_SLIDE) as slide:
        clean = detect_tissue(slide)
    # no JPEG, so only the marks differ from the clean slide (re-encoding CMU as JPEG moves
    # 0.5 % of mask pixels by itself)
    with open_slide(write_slide(tmp_path / "pen.tif", img, mpp=0.499, jpeg=False)) as slide:
        tissue = detect_tissue(slide)
    assert tissue.downsample == clean.downsample == 2.0
    mask = tissue.mask

    def at_mask(level0: np.ndarray) -> np.ndarray:
        return level0[::2, ::2]

    for marks in (blue, green, edges):
        core = ndimage.binary_erosion(at_mask(marks), iterations=2)
        assert core.any() and not mask[core].any()
    # away from the marks the tissue is what it was on the clean slide
    near = ndimage.binary_dilation(at_mask(blue | green | edges), iterations=6)
    agree = (mask == clean.mask)[~near].mean()
    assert agree > 0.998
    assert 0.30 < tissue.fraction < clean.fraction  # the blue mark covers some tissue


def test_pixel_rule_keeps_haematoxylin_and_drops_pen_colours():
    """Purple nuclei (red >= green) are tissue; cyan-blue and green ink are not."""
    rgb = np.full((60, 90, 3), 255, np.uint8)
    rgb[:, :30] = (90, 60, 150)  # haematoxylin
    rgb[:, 30:60] = (30, 90, 160)  # blue marker
    rgb[:, 60:] = (50, 150, 70)  # green marker
    mask = tissue_mask_from_rgb(rgb, min_area_px=1, min_hole_px=1).mask
    assert mask[:, 2:28].all() and not mask[:, 32:].any()


def test_pale_blue_counterstain_is_not_pen():
    """IHC counterstain that reads blue and green above red (what passed for blue ink) is
    tissue; the blue ink next to it, far more red-absorbing, is not."""
    rgb = np.full((60, 90, 3), 240, np.uint8)
    rgb[:, :30] = (150, 170, 205)  # pale blued haematoxylin
    rgb[:, 30:60] = (120, 150, 190)  # denser blued haematoxylin
    rgb[:, 60:] = (40, 80, 170)  # blue marker
    mask = tissue_mask_from_rgb(rgb, min_area_px=1, min_hole_px=1).mask
    assert mask[:, 2:58].all() and not mask[:, 62:].any()


def test_slide_without_mpp_uses_pixel_defaults():
    with open_slide(DATA_DIR / "boxes.tiff") as slide:
        tissue = detect_tissue(slide)
    assert "pixel defaults" in tissue.params["units"]
    assert tissue.mask.shape == (250, 300)
    assert 0.0 <= tissue.fraction <= 1.0 and tissue.polygons.is_valid


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (2, 2), (3, 7), (40, 57)])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_box3_is_scipys_3x3_dilation_and_erosion(shape, density):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    mask = rng.random(shape) < density
    square = np.ones((3, 3), bool)
    assert np.array_equal(box3(mask, dilate=True), ndimage.binary_dilation(mask, square))
    assert np.array_equal(box3(mask, dilate=False), ndimage.binary_erosion(mask, square))


def test_banded_thresholds_are_those_of_the_whole_thumbnail():
    """The pixel quantities are computed in bands of rows and their histograms summed: the
    thresholds, the dark share and the mask are those of the whole image at once. The bands
    differ (glass above, pale stain and dark edge below), so a threshold taken from any one
    band, or a histogram lost between bands, would give another answer."""
    rng = np.random.default_rng(7)
    h = 2 * BAND_ROWS + 37
    rgb = np.empty((h, 120, 3), np.uint8)
    rgb[:] = rng.integers(222, 240, (h, 120, 1), dtype=np.uint8)  # grey glass
    pale = rng.integers(0, 40, (h - BAND_ROWS, 120), dtype=np.uint8)
    rgb[BAND_ROWS:, :, 0] = 200 - pale // 2  # pale eosin, saturation about 0.05-0.2
    rgb[BAND_ROWS:, :, 1] = 190 - pale
    rgb[BAND_ROWS:, :, 2] = 205 - pale // 3
    rgb[BAND_ROWS - 10 : BAND_ROWS + 10, :30] = 20  # a dark edge across two bands
    got = tissue_mask_from_rgb(rgb, min_area_px=4, min_hole_px=4)

    whole = _planes(rgb)  # the reference: one pass over every pixel
    sat_thr = float(
        np.clip(otsu(*np.histogram(whole.sat[whole.counted], 256, (0.0, 1.0))), *SAT_CLAMP)
    )
    od_thr = float(
        np.clip(otsu(*np.histogram(whole.od[whole.counted], 256, (0.0, 1.0))), *OD_CLAMP)
    )
    assert SAT_CLAMP[0] < sat_thr < SAT_CLAMP[1]  # a threshold of the data, not a clamp
    assert got.saturation_threshold == sat_thr
    assert got.dark_fraction == float((rgb.max(axis=2) < DARK_MAX).mean()) > 0
    sat, od = whole.sat, whole.od
    mask = whole.candidate & (sat > SAT_CLAMP[0]) & ((sat > sat_thr) | (od > od_thr))
    assert np.array_equal(got.mask, _cleaned(mask, 4, 4))
    assert 0 < got.mask.mean() < 1
