"""wsi_segment.wsi.slide on the real slides of tests/data: one Slide type over openslide and tiffslide.

Measured on this machine: the CMU slide read by openslide and by tiffslide agrees pixel for
pixel (max |difference| 0 over all 2220 x 2967 px: both decode its JPEG tiles with
libjpeg-turbo), so the tolerance below is 0. A libjpeg build with another IDCT may differ by
a grey level or two; raise JPEG_TOLERANCE then, and say so.

Read errors (transient retries, corrupt tiles) are in test_slide_retries.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR
from wsi_segment.errors import ConfigError, MppMissingError, SlideError
from wsi_segment.wsi.box_mean import box_mean
from wsi_segment.wsi.region_reader import FINER_TOLERANCE, SERVING_TOLERANCE, choose_level
from wsi_segment.wsi.slide import Slide, _to_white_rgb, open_slide

JPEG_TOLERANCE = 0
OS1 = DATA_DIR / "OS-1-detail.ome.tif"
BOXES = DATA_DIR / "boxes.tiff"  # generic tiled TIFF, 4 levels, no mpp


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_cmu_opens_in_both_backends_with_the_same_facts_and_pixels(backend, cmu_pixels):
    with open_slide(CMU_SLIDE, backend) as slide:
        assert slide.backend == backend
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.level_dimensions == ((2220, 2967),)
        assert slide.level_downsamples == (1.0,)
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert slide.mpp_source == "metadata"
        assert slide.objective_power == 20.0
        assert slide.associated_images == ("label", "macro", "thumbnail")
        assert slide.bounds_offset == (0, 0)
        assert slide.storage_tile_size(0) == (240, 240)
        whole = slide.read_region((0, 0), 0, slide.dimensions)
        # an unaligned region too (crosses tile borders)
        part = slide.read_region((1001, 777), 0, (333, 251))
    assert whole.dtype == np.uint8 and whole.shape == (2967, 2220, 3)
    diff = np.abs(whole.astype(np.int16) - cmu_pixels.astype(np.int16))
    assert diff.max() <= JPEG_TOLERANCE
    assert np.array_equal(part, whole[777 : 777 + 251, 1001 : 1001 + 333])


def test_auto_prefers_openslide_and_falls_back_to_tiffslide():
    assert open_slide(CMU_SLIDE).backend == "openslide"
    with open_slide(OS1) as slide:  # openslide: "Unsupported or missing image file"
        assert slide.backend == "tiffslide"
        assert slide.vendor == "ome"
        assert slide.dimensions == (1101, 1101)
        assert slide.mpp == pytest.approx((0.2271, 0.2271), abs=1e-4)
        assert slide.read_region((500, 500), 0, (64, 64)).std() > 5  # real tissue
    with pytest.raises(SlideError, match=r"OS-1-detail\.ome\.tif.*openslide"):
        open_slide(OS1, backend="openslide")


def test_broken_and_non_slides_give_one_clear_error(tmp_path):
    with pytest.raises(SlideError) as err:
        open_slide(DATA_DIR / "broken.svs")
    text = str(err.value)
    assert "broken.svs" in text and "not a readable slide" in text
    assert "openslide:" in text and "tiffslide:" in text  # why each backend refused it
    assert "truncated, corrupt or of an unsupported format" in text
    text_file = tmp_path / "notes.svs"
    text_file.write_text("not a slide\n")
    with pytest.raises(SlideError, match=r"notes\.svs"):
        open_slide(text_file)
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(ConfigError, match="unknown slide backend"):
        open_slide(CMU_SLIDE, backend="bioformats")


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory):
    """A 700 x 500 px crop of the real CMU slide as a two-level DICOM slide folder."""
    pytest.importorskip("pydicom")
    from tests.wsi.dicom_slides import write_cmu_crop

    folder = tmp_path_factory.mktemp("dicom") / "case-7"
    return folder, write_cmu_crop(folder)


def test_a_dicom_slide_folder_opens_by_its_full_resolution_file(dicom_slide):
    """openslide opens a DICOM slide from any file of its series: the folder is taken as the
    slide, opened by its largest file (level 0), with every level and the pixel size."""
    folder, rgb = dicom_slide
    with open_slide(folder) as slide:
        assert slide.path == str(folder / "level-0.dcm")
        assert (slide.backend, slide.vendor) == ("openslide", "dicom")
        assert slide.level_dimensions == ((700, 500), (350, 250))
        assert slide.mpp == pytest.approx((0.499, 0.499))
        pixels = slide.read_region((0, 0), 0, (700, 500))
    assert np.abs(pixels.astype(int) - rgb).mean() < 8  # JPEG, quality 95, 4:2:0
    with open_slide(folder / "level-1.dcm") as same:  # any file of the series: the slide
        assert same.level_dimensions == ((700, 500), (350, 250))
        np.testing.assert_array_equal(same.read_region((0, 0), 0, (700, 500)), pixels)


def test_ycbcr_frames_labelled_rgb_read_as_the_same_slide_labelled_right(dicom_slide, tmp_path):
    """JFIF (YCbCr) frames under PhotometricInterpretation RGB, as some converters write
    them: openslide alone hands out Y, Cb, Cr as R, G, B (white ~ (255, 128, 128)); read
    through `open_slide` the pixels are exactly those of the same frames labelled YCbCr."""
    from tests.wsi.dicom_slides import write_dicom_slide

    folder, rgb = dicom_slide
    mislabelled = tmp_path / "case-7-rgb"
    write_dicom_slide(mislabelled, rgb, 0.499, photometric="RGB")
    import openslide

    with openslide.OpenSlide(str(mislabelled / "level-0.dcm")) as raw:
        assert raw.properties["dicom.PhotometricInterpretation"] == "RGB"
        as_openslide = np.asarray(raw.read_region((0, 0), 0, (700, 500)))[..., :3].astype(int)
    assert np.abs(as_openslide - rgb).mean() > 30  # the wrong colours this fixes
    for level, size in ((0, (700, 500)), (1, (350, 250))):
        with open_slide(mislabelled) as bad, open_slide(folder) as good:
            np.testing.assert_array_equal(
                bad.read_region((0, 0), level, size), good.read_region((0, 0), level, size)
            )


def _jpeg_head(*segments: bytes) -> bytes:
    return b"\xff\xd8" + b"".join(segments) + b"\xff\xda\x00\x02"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _sof(ids: tuple[int, int, int]) -> bytes:
    comps = b"".join(bytes([i, 0x11, 0]) for i in ids)
    return _segment(0xC0, b"\x08\x01\x00\x01\x00\x03" + comps)


def _adobe(transform: int) -> bytes:
    return _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes([transform]))


@pytest.mark.parametrize(
    ("head", "ycbcr"),
    [
        (_jpeg_head(_segment(0xE0, b"JFIF\x00\x01\x01"), _sof((82, 71, 66))), True),  # JFIF wins
        (_jpeg_head(_adobe(0), _sof((1, 2, 3))), False),  # Adobe: transform 0 is RGB
        (_jpeg_head(_adobe(1), _sof((82, 71, 66))), True),
        (_jpeg_head(_sof((1, 2, 3))), True),  # no marker: ids 1, 2, 3
        (_jpeg_head(_sof((82, 71, 66))), False),  # no marker: ids 'R', 'G', 'B'
        (_jpeg_head(_sof((7, 8, 9))), True),  # otherwise YCbCr
    ],
)
def test_the_frames_colour_space_by_libjpegs_rule(head, ycbcr):
    from wsi_segment.wsi.dicom_colour import frames_are_ycbcr

    assert frames_are_ycbcr(head) is ycbcr


def test_a_folder_that_is_no_slide_is_refused_with_the_file_to_pass(tmp_path):
    """.dcm files openslide does not take for a DICOM slide, an MRXS data folder (its .mrxs
    file named), any other folder: one SlideError each, with what to pass."""
    dicom = tmp_path / "case-8"
    dicom.mkdir()
    for name in ("level-0.dcm", "LABEL.DCM", "a.txt"):
        (dicom / name).write_bytes(b"not dicom")
    with pytest.raises(SlideError) as err:
        open_slide(dicom)
    assert str(err.value) == (
        f"{dicom}: is a directory whose 2 .dcm file(s) openslide does not read as a DICOM "
        "whole-slide image; pass the slide file itself (a DICOM slide: a folder of VL Whole "
        "Slide Microscopy .dcm files)"
    )
    mirax = tmp_path / "CMU-1"
    mirax.mkdir()
    (tmp_path / "CMU-1.mrxs").write_bytes(b"x")
    with pytest.raises(SlideError, match=f"MRXS slide: pass {tmp_path / 'CMU-1.mrxs'}$"):
        open_slide(mirax)
    with pytest.raises(SlideError, match="is a directory, not a slide; pass the slide file"):
        open_slide(tmp_path)


def test_mpp_override_wins_and_is_validated():
    with open_slide(CMU_SLIDE, mpp=0.25) as slide:
        assert slide.mpp == (0.25, 0.25)
        assert slide.require_mpp() == (0.25, 0.25)
        assert slide.mpp_source == "override"
        assert slide.info()["mpp"] == [0.25, 0.25]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--mpp"):
            open_slide(CMU_SLIDE, mpp=bad)


def test_slide_without_mpp_opens_and_require_mpp_says_pass_mpp():
    with open_slide(BOXES) as slide:  # 72 dpi resolution tags only: no microscope mpp
        assert slide.mpp is None and slide.mpp_source is None
        assert slide.info()["mpp"] is None
        with pytest.raises(MppMissingError, match="--mpp") as err:
            slide.require_mpp()
        assert "boxes.tiff" in str(err.value)
    assert open_slide(BOXES, mpp=0.5).require_mpp() == (0.5, 0.5)


def test_a_pixel_size_no_slide_has_is_refused_with_the_recorded_value(tmp_path):
    """A resolution in the wrong unit (1e-5 um/px) was taken: the slide planned petabytes
    (`--tissue all`) or found no tissue, exit 0. Outside the range any slide may be given it
    is the file's error, said with what it records; --mpp still opens it."""
    import tifffile

    path = tmp_path / "wrong-unit.tif"
    pixels = np.full((64, 64, 3), 200, np.uint8)
    tifffile.imwrite(
        path, pixels, tile=(16, 16), resolution=(1e9, 1e9), resolutionunit="CENTIMETER"
    )
    with open_slide(path) as slide:
        assert slide.mpp is None and slide.mpp_source is None and slide.info()["mpp"] is None
        with pytest.raises(MppMissingError) as err:
            slide.require_mpp()
    assert str(err.value) == (
        f"{path}: the slide records a pixel size of 1e-05 x 1e-05 um/px, which no slide has "
        "(outside [0.01, 100]: a writer's default dpi, or a wrong unit); pass it with --mpp "
        "(e.g. --mpp 0.25 for 40x, 0.5 for 20x)"
    )
    with open_slide(path, mpp=0.5) as slide:
        assert slide.require_mpp() == (0.5, 0.5) and slide.mpp_source == "override"


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_out_of_bounds_pixels_are_white(backend, cmu_pixels):
    with open_slide(CMU_SLIDE, backend) as slide:
        w, h = slide.dimensions
        top_left = slide.read_region((-100, -50), 0, (300, 200))
        bottom_right = slide.read_region((w - 40, h - 30), 0, (100, 80))
        outside = slide.read_region((w + 10, -500), 0, (50, 50))
    assert (top_left[:50] == 255).all() and (top_left[:, :100] == 255).all()
    assert np.array_equal(top_left[50:, 100:], cmu_pixels[:150, :200])
    assert np.array_equal(bottom_right[:30, :40], cmu_pixels[h - 30 :, w - 40 :])
    assert (bottom_right[30:] == 255).all() and (bottom_right[:, 40:] == 255).all()
    assert (outside == 255).all()


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_out_of_bounds_white_on_a_pyramid_level(backend):
    """boxes.tiff level 2 has downsample 4.016 (75 x 62 px): beyond its edge is white."""
    with open_slide(BOXES, backend) as slide:
        lw, lh = slide.level_dimensions[2]
        region = slide.read_region((0, 0), 2, (lw + 20, lh + 10))
    assert region.shape == (lh + 10, lw + 20, 3)
    assert (region[:, lw:] == 255).all() and (region[lh:] == 255).all()
    assert (region[:lh, :lw] != 255).any()


def test_file_url_goes_through_tiffslide(cmu_pixels):
    url = CMU_SLIDE.resolve().as_uri()
    with open_slide(url) as slide:
        assert slide.backend == "tiffslide" and slide.path == url
        assert slide.mpp == pytest.approx((0.499, 0.499))
        region = slide.read_region((1200, 1400), 0, (256, 256))
    assert np.array_equal(region, cmu_pixels[1400:1656, 1200:1456])
    with pytest.raises(ConfigError, match="--backend tiffslide"):
        open_slide(url, backend="openslide")


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_slide_pickles_small_and_reopens(backend):
    slide = open_slide(CMU_SLIDE, backend, mpp=0.5)
    before = slide.read_region((300, 400), 0, (64, 64))  # reader now open
    data = pickle.dumps(slide)
    assert len(data) < 20_000  # path + metadata, never pixels or handles
    clone = pickle.loads(data)
    assert isinstance(clone, Slide) and clone._reader is None  # opens lazily where used
    assert (clone.path, clone.backend, clone.mpp) == (slide.path, backend, (0.5, 0.5))
    assert np.array_equal(clone.read_region((300, 400), 0, (64, 64)), before)
    slide.close()
    clone.close()


def test_levels_tiles_and_info_on_a_pyramid():
    with open_slide(BOXES) as slide:
        assert slide.level_count == 4
        assert slide.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
        # the one level chooser (wsi.region_reader.choose_level): 4.016 for a nominal 4
        # (rounded dimensions) serves a model at 4.0 (0.4 % coarser), but not at 3.9 (3 %);
        # `finer` never reads a level coarser than the model's pixels
        assert slide.level_downsamples[2] == pytest.approx(4.016, abs=1e-3)
        ratios = (0.5, 3.9, 4.0, 4.02, 100)
        downsamples = slide.level_downsamples
        serving = [choose_level(downsamples, ds, SERVING_TOLERANCE) for ds in ratios]
        finer = [choose_level(downsamples, ds, FINER_TOLERANCE) for ds in ratios]
        assert (serving, finer) == ([0, 1, 2, 2, 3], [0, 1, 1, 2, 3])
        assert slide.storage_tile_size(3) == (64, 64)
        with pytest.raises(ConfigError, match="level 4 out of range"):
            slide.storage_tile_size(4)
        with pytest.raises(ConfigError, match="level -1"):
            slide.read_region((0, 0), -1, (4, 4))
        info = slide.info()
    assert {
        "path",
        "backend",
        "vendor",
        "level_count",
        "level_dimensions",
        "level_downsamples",
        "mpp",
        "objective_power",
        "associated_images",
    } <= set(info)
    assert info["level_dimensions"][3] == [37, 31] and info["vendor"] == "generic-tiff"


# -- thumbnails ---------------------------------------------------------------------


def spy_reads(slide: Slide) -> list[tuple[tuple[int, int], int, tuple[int, int]]]:
    """Record every read_region call the thumbnail makes (then do the real read)."""
    calls = []
    real = slide.read_region

    def read(location, level, size):
        calls.append((tuple(location), level, tuple(size)))
        return real(location, level, size)

    slide.read_region = read  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize(
    ("max_size", "level", "shape", "ds"),
    [
        (1000, 0, (250, 300), 1.0),  # larger than the slide: level 0 as it is
        (300, 0, (250, 300), 1.0),
        (150, 1, (125, 150), 2.0),  # level 1 is exactly big enough
        (100, 1, (63, 75), 4.0),  # level 2 (75 px) < 100: level 1, 2 x 2 averaged
        (40, 2, (31, 38), 2 * 4.016129032258064),  # level 3 (37 px) < 40
        (37, 3, (31, 37), 8.086312118570184),  # level 3 is exactly big enough
        (20, 3, (16, 19), 2 * 8.086312118570184),
    ],
)
def test_thumbnail_reads_only_the_coarsest_level_big_enough(max_size, level, shape, ds):
    with open_slide(BOXES) as slide:
        calls = spy_reads(slide)
        thumb, got_ds = slide.thumbnail(max_size)
        lw, lh = slide.level_dimensions[level]
        k = round(ds / slide.level_downsamples[level])
    assert thumb.shape == (*shape, 3) and thumb.dtype == np.uint8
    assert max(thumb.shape[:2]) <= max_size
    assert got_ds == pytest.approx(ds)
    assert {c[1] for c in calls} == {level}
    area = sum(w * h for _, _, (w, h) in calls)
    assert area <= (lw + k) * (lh + k)  # each level pixel once (plus the edge of one block)


def test_thumbnail_pieces_are_storage_tile_aligned_and_average_correctly(cmu_pixels):
    with open_slide(CMU_SLIDE) as slide:
        calls = spy_reads(slide)
        thumb, ds = slide.thumbnail(1000)  # 2967 / 1000 -> 3 x 3 blocks of level 0
    assert ds == 3.0 and thumb.shape == (989, 740, 3)
    assert len(calls) > 1  # read piece by piece
    assert all(x % 240 == 0 and y % 240 == 0 for (x, y), _, _ in calls)  # no tile read twice
    assert sum(w * h for _, _, (w, h) in calls) == 2220 * 2967  # 2220, 2967 divisible by 3
    assert np.array_equal(thumb, box_mean(cmu_pixels, 3))  # the one rule, read piece by piece


def test_thumbnail_edge_blocks_are_completed_with_white(cmu_pixels):
    with open_slide(CMU_SLIDE) as slide:
        thumb, ds = slide.thumbnail(740)  # 2967 / 740 -> 5 x 5 blocks: 2220 = 444 x 5, 2967 not
    assert ds == 5.0 and thumb.shape == (594, 444, 3)
    assert np.array_equal(thumb, box_mean(cmu_pixels, 5))


# -- compositing --------------------------------------------------------------------


def blend_over_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float64) / 255
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def test_to_white_rgb_opaque_fast_path_and_transparency():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    out = _to_white_rgb(rgba, None)
    assert out.flags.c_contiguous and out.shape == (64, 80, 3)
    assert np.array_equal(out, rgba[..., :3])
    rgba[..., 3] = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    out = _to_white_rgb(rgba, None)
    assert np.abs(out.astype(int) - blend_over_white(rgba).astype(int)).max() <= 1
    assert (out[0, 0] == 255).all() and np.array_equal(out[0, 1], rgba[0, 1, :3])
    inside = np.ones((64, 80), bool)
    inside[:, 70:] = False
    out = _to_white_rgb(rgba[..., :3].copy(), inside)
    assert (out[:, 70:] == 255).all() and np.array_equal(out[:, :70], rgba[:, :70, :3])
    grey = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    assert np.array_equal(_to_white_rgb(grey, None), np.repeat(grey, 3, axis=2))
