"""wsi_segment.synthetic.slides: the slide opens as Aperio everywhere and its label map tells the truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
import tifffile
from scipy import ndimage

from wsi_segment.synthetic.slides import (
    BACKGROUND,
    CLASS_NAMES,
    main,
    read_label_map,
    write_synthetic_slide,
)

SIZE = 2048
MPP = 0.5


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """One 2048 px slide, half tissue (~5 s): (slide path, label path)."""
    path = tmp_path_factory.mktemp("synthetic") / "syn.svs"
    labels = write_synthetic_slide(path, SIZE, SIZE, mpp=MPP, seed=0, tissue_fraction=0.5)
    return path, labels


def _cells(path, ds: int) -> tuple[np.ndarray, np.ndarray]:
    """Level 0 as (rows, cols, ds, ds, 3) label cells, and the label map."""
    labels, _ = read_label_map(path.with_name(path.stem + ".labels.png"))
    img = tifffile.imread(path)  # level 0 (tifffile's SVS series)
    rows, cols = labels.shape
    img = img[: rows * ds, : cols * ds].reshape(rows, ds, cols, ds, 3).swapaxes(1, 2)
    return img, labels


def _label_polygons(labels: np.ndarray, ds: int, mask: np.ndarray | None = None):
    """Level-0 polygons of a boolean mask on the label grid."""
    import rasterio.features
    from affine import Affine
    from shapely.geometry import shape

    m = (labels != BACKGROUND) if mask is None else mask
    geoms = [
        shape(g)
        for g, v in rasterio.features.shapes(m.astype(np.uint8), mask=m, transform=Affine.scale(ds))
        if v == 1
    ]
    return shapely.union_all(geoms)


def test_openslide_tiffslide_and_open_slide_read_it_as_aperio(slide):
    import openslide
    import tiffslide

    from wsi_segment.wsi.slide import open_slide

    path, _ = slide
    dims = ((SIZE, SIZE), (SIZE // 4, SIZE // 4))
    osr = openslide.OpenSlide(str(path))
    assert osr.properties["openslide.vendor"] == "aperio"
    assert float(osr.properties["openslide.mpp-x"]) == MPP
    assert float(osr.properties["openslide.mpp-y"]) == MPP
    assert float(osr.properties["openslide.objective-power"]) == 20
    assert osr.level_dimensions == dims and osr.level_downsamples == (1.0, 4.0)
    assert "thumbnail" in osr.associated_images
    osr.close()
    ts = tiffslide.TiffSlide(path)
    assert ts.properties["tiffslide.vendor"] == "aperio"
    assert float(ts.properties["tiffslide.mpp-x"]) == MPP
    assert ts.level_dimensions == dims
    ts.close()
    for backend in ("openslide", "tiffslide"):
        with open_slide(path, backend=backend) as s:
            assert s.vendor == "aperio" and s.mpp == (MPP, MPP)
            assert s.level_count == 2 and s.level_dimensions == dims
            assert s.storage_tile_size(0) == (256, 256)


def test_label_map_sidecar_describes_the_grid(slide):
    path, label_path = slide
    labels, meta = read_label_map(label_path)
    ds = meta["downsample"]
    assert SIZE % ds == 0 and 256 % ds == 0
    assert labels.shape == (SIZE // ds, SIZE // ds) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3, BACKGROUND}
    assert meta["classes"] == list(CLASS_NAMES) and meta["mpp"] == MPP
    assert (meta["width"], meta["height"], meta["slide"]) == (SIZE, SIZE, path.name)
    assert label_path.with_name("syn.labels.json").is_file()
    # Class regions are tens to hundreds of micrometres: mean component > (50 um)^2.
    cell_um2 = (ds * MPP) ** 2
    for k in range(4):
        _, n = ndimage.label(labels == k)
        if n:
            assert (labels == k).sum() / n * cell_um2 > 50**2


def test_pixels_follow_the_label_map(slide):
    path, label_path = slide
    ds = read_label_map(label_path)[1]["downsample"]
    cells, labels = _cells(path, ds)
    bg = labels == BACKGROUND
    # Background is white; JPEG ringing only touches cells next to tissue.
    far = ndimage.binary_erosion(bg, np.ones((3, 3), bool), border_value=1)
    assert cells[far].min() > 230
    assert cells[bg].mean(axis=(1, 2, 3)).min() > 240
    # Every tissue cell is visibly stained (mean of its darkest channel well below white).
    assert cells[~bg].min(axis=-1).mean(axis=(1, 2)).max() < 225


def test_class_statistics_differ_in_the_expected_direction(slide):
    path, label_path = slide
    ds = read_label_map(label_path)[1]["downsample"]
    cells, labels = _cells(path, ds)
    gray, texture, pink = {}, {}, {}
    for k, name in enumerate(CLASS_NAMES):
        px = cells[labels == k].astype(np.float32)  # (n, ds, ds, 3)
        assert len(px) > 100, f"{name} too small on this seed for statistics"
        g = px.mean(axis=-1)
        rgb = px.reshape(-1, 3).mean(axis=0)
        gray[name], texture[name], pink[name] = g.mean(), g.std(axis=(1, 2)).mean(), rgb[0] - rgb[2]
    # Measured (seed 0): gray LYM 116 < TE 150 < NEC 176 < TAS 197.
    assert gray["LYM"] + 15 < gray["TE"] < gray["NEC"] - 10 < gray["TAS"] - 20
    # Dense dark nuclei make LYM the most textured, TE next, pale necrosis the least.
    assert texture["LYM"] > texture["TE"] + 10 > texture["NEC"] + 10
    # Eosin-rich NEC and TAS are pinker (red above blue) than haematoxylin-rich TE and LYM.
    assert min(pink["NEC"], pink["TAS"]) > max(pink["TE"], pink["LYM"]) + 10


def test_pyramid_level_is_a_downsample_of_level_0(slide):
    path, _ = slide
    with tifffile.TiffFile(path) as tif:
        level0 = tif.series[0].levels[0].asarray().astype(np.float32)
        level1 = tif.series[0].levels[1].asarray().astype(np.float32)
    box = level0.reshape(SIZE // 4, 4, SIZE // 4, 4, 3).mean(axis=(1, 3))
    assert np.abs(box - level1).mean() < 3


def test_same_seed_same_bytes_other_seed_other_labels(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.svs", 768, 512, seed=3)
    b = write_synthetic_slide(tmp_path / "b.svs", 768, 512, seed=3)
    c = write_synthetic_slide(tmp_path / "c.svs", 768, 512, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.svs").read_bytes() == (tmp_path / "b.svs").read_bytes()
    la, lc = read_label_map(a)[0], read_label_map(c)[0]
    assert la.shape == lc.shape and (la != lc).mean() > 0.2


def test_blank_slide_has_no_tissue(tmp_path):
    from wsi_segment.wsi.slide import open_slide
    from wsi_segment.wsi.tissue import detect_tissue

    path = tmp_path / "blank.svs"
    labels, _ = read_label_map(write_synthetic_slide(path, 1024, 1024, tissue_fraction=0))
    assert (labels == BACKGROUND).all()
    assert (tifffile.imread(path) == 255).all()
    with open_slide(path) as s:
        found = detect_tissue(s)
    assert found.fraction == 0 and found.polygons.is_empty


def test_detect_tissue_agrees_with_the_label_map(slide):
    from wsi_segment.wsi.slide import open_slide
    from wsi_segment.wsi.tissue import detect_tissue

    path, label_path = slide
    labels, meta = read_label_map(label_path)
    truth_fraction = float((labels != BACKGROUND).mean())
    assert truth_fraction == pytest.approx(0.5, abs=0.1)
    with open_slide(path) as s:
        found = detect_tissue(s)
    assert found.fraction == pytest.approx(truth_fraction, abs=0.03)
    truth = _label_polygons(labels, meta["downsample"])
    iou = truth.intersection(found.polygons).area / truth.union(found.polygons).area
    assert iou > 0.95


def test_odd_sizes_and_cli(tmp_path, capsys):
    import openslide

    assert main([str(tmp_path / "cli.svs"), "--size", "600", "--tissue", "0.8"]) == 0
    assert "cli.labels.png" in capsys.readouterr().out
    meta = json.loads((tmp_path / "cli.labels.json").read_text())
    assert (meta["width"], meta["height"], meta["tissue_fraction"]) == (600, 600, 0.8)
    labels, _ = read_label_map(tmp_path / "cli.labels.png")
    assert (labels != BACKGROUND).mean() == pytest.approx(0.8, abs=0.1)
    write_synthetic_slide(tmp_path / "odd.svs", 1100, 700, mpp=0.25, tissue_fraction=0.3)
    osr = openslide.OpenSlide(str(tmp_path / "odd.svs"))
    assert osr.level_dimensions == ((1100, 700), (275, 175))
    assert osr.properties["openslide.mpp-x"] == "0.25"
    # Pixels past the slide edge inside the last tile are not visible; the edge itself reads.
    assert np.asarray(osr.read_region((1090, 690), 0, (10, 10))).shape == (10, 10, 4)
    osr.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_detect_tissue_reads_a_small_pyramid_level_as_it_is(slide):
    """Asked for a 1024 px thumbnail of this 2048 px slide (levels 2048 and 512 px), the
    512 px level is read without resampling instead of averaging level 0 (16x the pixels);
    the tissue found is the same."""
    from wsi_segment.wsi.slide import open_slide
    from wsi_segment.wsi.tissue import detect_tissue, thumbnail_request

    path, label_path = slide
    labels, meta = read_label_map(label_path)
    with open_slide(path) as s:
        assert [max(d) for d in s.level_dimensions] == [2048, 512]
        assert thumbnail_request(s.level_dimensions, 1024) == 512
        assert thumbnail_request(s.level_dimensions, 2048) == 2048  # no level in [1024, 2048]
        found = detect_tissue(s, thumb_size=1024)
    assert found.downsample == 4.0 and found.mask.shape == (512, 512)
    assert found.fraction == pytest.approx(float((labels != BACKGROUND).mean()), abs=0.03)
    truth = _label_polygons(labels, meta["downsample"])
    assert truth.intersection(found.polygons).area / truth.union(found.polygons).area > 0.95
