"""End to end on the real CMU slide: the five outputs, their schemas, and their agreement."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import shapely
import zarr
from shapely.geometry import shape

from tests.conftest import CMU_SLIDE, DATA_DIR, LOCAL_FACTS, LUAD_CLASSES, plan_spec, what_ran
from tests.reference_inference import label_count_bounds
from wsi_segment.errors import ModelError, MppMissingError, OutputError, SlideError
from wsi_segment.models.bundle import demo_model_dir, load_bundle
from wsi_segment.models.runtimes.openvino_runtime import openvino_version
from wsi_segment.models.runtimes.select import open_runtime
from wsi_segment.pipeline.machine import probe_machine
from wsi_segment.pipeline.outputs.run_identity import output_id
from wsi_segment.pipeline.outputs.summary import SCHEMA_VERSION
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.run_policy import decide_for_model
from wsi_segment.pipeline.segment import segment_slide


@pytest.fixture(scope="module")
def cmu_run(tmp_path_factory):
    """The shipped demo model (the default without --model) on the real CMU slide.

    Device and chunk size are pinned: with `auto` a machine with a GPU plans 8 x 8 tile
    chunks (one chunk covers this slide, so no storage tile is shared between chunks) and
    reports another device; the checks below are about the CPU run with 4 x 4 chunks."""
    out = tmp_path_factory.mktemp("out")
    params = SegmentParams(device="cpu", chunk_tiles=4)
    result = segment_slide(CMU_SLIDE, out, params)
    return result, out, params


def test_outputs_exist_and_nothing_else(cmu_run):
    result, out, _ = cmu_run
    assert result.status == "done"
    names = sorted(p.name for p in result.out_dir.iterdir())
    assert names == [
        "overlay-thumbnail.jpg",
        "overlay.png",
        "probabilities.ome.zarr",
        "summary.json",
        "tissue.geojson",
    ]
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def test_zarr_shape_follows_mpp_arithmetic_and_reads_with_ome_zarr(cmu_run):
    result, _, _ = cmu_run
    store = result.out_dir / "probabilities.ome.zarr" / "0"  # the image (bioformats2raw)
    level0 = zarr.open_group(str(store), mode="r")["0"]
    w0, h0 = 2220, 2967
    f = 1.0 / 0.499  # level-0 pixels per model pixel (demo model: 1 um/px)
    expected = (4, math.ceil(math.ceil(h0 / f) / 4), math.ceil(math.ceil(w0 / f) / 4))
    assert level0.shape == expected and level0.dtype == np.uint8
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(store)))())
    assert nodes[0].data[0].shape == expected
    attrs = zarr.open_group(str(store), mode="r").attrs.asdict()
    assert [c["label"] for c in attrs["omero"]["channels"]] == LUAD_CLASSES
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[1:] == pytest.approx([0.499 * f * 4] * 2)
    assert attrs["multiscales"][0]["name"] == CMU_SLIDE.stem
    labels = [n for n in nodes if "image-label" in n.zarr.root_attrs]
    assert len(labels) == 1 and labels[0].data[0].shape == expected[1:]
    # what Bio-Formats (QuPath 0.6) reads: valid OME-XML that matches the arrays
    import ome_types

    xml = (store.parent / "OME" / "METADATA.ome.xml").read_text(encoding="utf-8")
    pixels = ome_types.from_xml(xml, validate=True).images[0].pixels
    assert (pixels.size_c, pixels.size_y, pixels.size_x) == expected
    assert [c.name for c in pixels.channels] == LUAD_CLASSES
    assert pixels.physical_size_x == pytest.approx(scale[2])


def test_geojson_is_valid_for_qupath_and_inside_the_slide(cmu_run):
    result, _, _ = cmu_run
    fc = json.loads((result.out_dir / "tissue.geojson").read_text())
    assert fc["type"] == "FeatureCollection"
    names = [f["properties"]["classification"]["name"] for f in fc["features"]]
    assert names[0] == "Tissue" and set(names[1:]) <= set(LUAD_CLASSES)
    geoms = []
    for feature in fc["features"]:
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert len(props["classification"]["color"]) == 3
        assert all(isinstance(v, int | float) for v in props["measurements"].values())
        geom = shape(feature["geometry"])
        assert geom.is_valid and geom.geom_type in ("Polygon", "MultiPolygon")
        minx, miny, maxx, maxy = geom.bounds
        assert minx >= 0 and miny >= 0 and maxx <= 2220 + 1e-6 and maxy <= 2967 + 1e-6
        if props["classification"]["name"] != "Tissue":
            geoms.append(geom)
    for i, a in enumerate(geoms):
        for b in geoms[i + 1 :]:
            assert a.intersection(b).area < 1e-6 * max(a.area, 1)


def test_areas_agree_between_summary_zarr_and_polygons(cmu_run):
    result, _, _ = cmu_run
    summary = json.loads((result.out_dir / "summary.json").read_text())
    probs = np.asarray(zarr.open_group(str(result.out_dir / "probabilities.ome.zarr"))["0/0"][:])
    labels = np.argmax(probs, axis=0)
    labelled = probs.max(axis=0) > 0
    px_um2 = summary["output"]["mpp"]["x"] * summary["output"]["mpp"]["y"]
    # Areas count each output pixel for its part on the slide (the last column and row can
    # hang over its edge).
    scale = summary["output"]["level0_per_output_pixel"]
    w0, h0 = summary["slide"]["dimensions"]
    on_slide = np.outer(
        np.clip(h0 / scale - np.arange(labels.shape[0]), 0.0, 1.0),
        np.clip(w0 / scale - np.arange(labels.shape[1]), 0.0, 1.0),
    )
    # Labels are taken before quantisation: they differ from the stored argmax only where
    # stored values tie at the top, or are all 0 (the gate removed the sure class).
    low, high = label_count_bounds(probs, on_slide)
    labelled_area = float(on_slide[labelled].sum())
    assert (high - low).sum() <= 0.01 * labelled_area  # ties need a near-even top pair
    pixels = {n: c["area_um2"] / px_um2 for n, c in summary["classes"].items()}
    zeros = sum(pixels.values()) - labelled_area
    assert -1e-6 <= zeros <= 0.001 * labelled_area
    fc = json.loads((result.out_dir / "tissue.geojson").read_text())
    polys = {
        f["properties"]["classification"]["name"]: shape(f["geometry"]) for f in fc["features"]
    }
    level0_um2 = 0.499 * 0.499
    for k, name in enumerate(LUAD_CLASSES):
        zarr_area = float(((labels == k) & labelled).sum() * px_um2)
        assert low[k] - 1e-6 <= pixels[name] <= high[k] + zeros + 1e-6
        if zarr_area:
            # what QuPath's Area column shows for the polygon: within 1 % of the reported area
            # (simplification, 1 output px tolerance, keeps each class's area; the demo
            # model's NEC here is 28 output px, in specks)
            poly_area = polys[name].area * level0_um2
            assert poly_area == pytest.approx(pixels[name] * px_um2, rel=0.01)
    assert sum(c["fraction_of_tissue"] for c in summary["classes"].values()) == pytest.approx(1.0)
    assert summary["model"]["sha256"] and summary["versions"]["torch"]
    assert summary["schema_version"] == SCHEMA_VERSION
    # From the model, per tile: its core's uint8 probabilities and labels, and y (float32)
    run = summary["run_stats"]
    side = summary["tiling"]["stride"] // summary["parameters"]["output_downsample"]
    assert run["tiles_run"] == summary["tiling"]["tiles"] > 0
    assert run["bytes_from_model_per_tile"] == 4 * side * side + side * side + 4 * 4
    # The engine's own figures (EngineStats.report): the plan's layout; full batches across
    # chunks, the last one short; the first forward pass after the first tiles, in the stage
    engine, policy = summary["engine"], summary["run_policy"]
    for key in ("batch_size", "compute_threads", "writers"):
        assert engine[key] == policy[key]["value"], key
    assert engine["tiles"] == run["tiles_run"]
    assert engine["forward_passes"] == math.ceil(run["tiles_run"] / engine["batch_size"])
    assert engine["batches_spanning_chunks"] >= 1
    timings = summary["timings_s"]
    assert 0 < engine["first_tiles_s"] <= engine["first_forward_s"] < timings["inference_s"]
    # Local runs decode each 240 px storage tile of the CMU slide once (wsi.tile_reuse): one
    # thread reads the chunks in plan order (host_tiles), so no two threads race for a tile;
    # with 4 x 4 chunks neighbouring chunks share storage tiles.
    reads = summary["read_stats"]
    assert reads["storage_tiles_reused"] > 0
    assert reads["storage_tiles_decoded"] <= math.ceil(2220 / 240) * math.ceil(2967 / 240)
    assert reads["blocks_decoded_from_file"] > 0  # the SVS is read with tiffslide's decoder
    assert summary["model"]["name"] == "demo-synthetic-luad-resnet10t"
    # runtime and precision auto: what the model alone chooses on this machine, and why
    precision = summary["precision"]
    assert precision["device"] == "cpu" and precision["channels_last"] is True
    demo = load_bundle(demo_model_dir())
    alone = open_runtime(demo, plan_spec("auto", "auto", demo.meta.tile_size)).report()
    assert what_ran(precision) == json.loads(json.dumps(alone))
    cache_fields = {"graphs_compiled", "graphs_loaded", "checks_computed", "network_built"}
    assert set(precision["runtime_cache"]) == cache_fields
    assert precision["runtime"] == ("openvino" if openvino_version() else "torch")
    # the runtime is the policy's, opened as decided: the same words in both records
    decided = summary["run_policy"]["runtime"]
    assert precision["runtime_reason"] == f"{decided['value']}: {decided['reason']}"
    # the precision too: the policy decided it; the model ran it (and the calibration it names)
    wanted = summary["run_policy"]["precision"]
    assert precision["reason"] == f"{wanted['value']}: {wanted['reason']}"
    calibration = precision["calibration"]
    if calibration is not None:  # bf16 hardware: judged on real tissue, the plan resolved by it
        assert wanted["value"] == calibration["chosen"] == precision["autocast"]
        kept = summary["run_policy"]["calibration"]
        assert kept == {k: calibration[k] for k in kept}
        assert 0.0 <= calibration["agreement"] <= 1.0
    # The demo model finds more than one tissue class on this real H&E region.
    assert sum(c["fraction_of_tissue"] > 0.05 for c in summary["classes"].values()) >= 2


def test_summary_records_the_run_policy_it_ran(cmu_run):
    """summary.json `run_policy`: the decisions of `pipeline.run_policy.decide` for this
    machine and the options, every one with its reason, and what the run did matches. On a
    CPU with bf16 the plan holds the model's bf16 verdict, which the run's load kept."""
    result, _out, params = cmu_run
    summary = json.loads((result.out_dir / "summary.json").read_text())
    # a CPU run examines no JPEG tiles
    model = str(demo_model_dir())
    expected = decide_for_model(probe_machine(), params, LOCAL_FACTS, model).as_dict()
    assert summary["run_policy"] == expected
    assert summary["run_policy"]["chunk_tiles"] == {
        "value": 4,
        "reason": "asked for (--chunk-tiles 4)",
    }
    assert summary["run_policy"]["read_source"] == "reader thread"
    assert summary["precision"]["device"] == summary["run_policy"]["device"]["value"] == "cpu"


def test_rerun_is_up_to_date_and_overwrite_redoes(cmu_run, tiny_model_dir):
    result, out, params = cmu_run
    mtime = (result.out_dir / "summary.json").stat().st_mtime_ns
    again = segment_slide(CMU_SLIDE, out, params)
    assert again.status == "up-to-date"
    assert (result.out_dir / "summary.json").stat().st_mtime_ns == mtime
    with pytest.raises(OutputError, match="--overwrite"):
        segment_slide(
            CMU_SLIDE, out, SegmentParams(model_dir=tiny_model_dir, overlap=16, gate=False)
        )


def test_rerun_with_another_precision_request_is_not_up_to_date(tmp_path, cmu_region_slide):
    """`auto` may have run bf16; a rerun asking for `fp32` must not keep those outputs (it
    is refused like any other parameter change, and --overwrite redoes it in fp32)."""
    from wsi_segment.models.bundle import demo_model_dir

    auto = SegmentParams(model_dir=demo_model_dir(), mpp=0.499, device="cpu", precision="auto")
    fp32 = dataclasses.replace(auto, precision="fp32")
    assert segment_slide(cmu_region_slide, tmp_path, auto).status == "done"
    assert segment_slide(cmu_region_slide, tmp_path, auto).status == "up-to-date"
    with pytest.raises(OutputError, match="--overwrite"):
        segment_slide(cmu_region_slide, tmp_path, fp32)
    redone = segment_slide(cmu_region_slide, tmp_path, dataclasses.replace(fp32, overwrite=True))
    assert redone.status == "done"
    assert redone.summary["parameters"]["precision"] == "fp32"
    assert redone.summary["precision"]["autocast"] == "fp32"
    assert segment_slide(cmu_region_slide, tmp_path, fp32).status == "up-to-date"
    with pytest.raises(OutputError, match="--overwrite"):
        segment_slide(cmu_region_slide, tmp_path, auto)


@pytest.mark.parametrize(
    ("slide", "error"),
    [
        (DATA_DIR / "missing.svs", SlideError),
        (DATA_DIR / "broken.svs", SlideError),
        (DATA_DIR, SlideError),
    ],
)
def test_bad_slides_leave_no_output(tmp_path, tiny_model_dir, slide, error):
    with pytest.raises(error, match=re.escape(slide.name)):
        segment_slide(slide, tmp_path / "out", SegmentParams(model_dir=tiny_model_dir))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_slide_without_mpp_needs_override(tmp_path, tiny_model_dir):
    import tifffile

    from wsi_segment.wsi.slide import open_slide

    region = open_slide(CMU_SLIDE).read_region((0, 0), 0, (300, 200))
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, region, tile=(256, 256))
    with pytest.raises(MppMissingError, match="--mpp"):
        segment_slide(path, tmp_path / "out", SegmentParams(model_dir=tiny_model_dir))
    assert not (tmp_path / "out").exists()
    done = segment_slide(path, tmp_path / "out", SegmentParams(model_dir=tiny_model_dir, mpp=0.5))
    assert done.status == "done"
    assert json.loads((done.out_dir / "summary.json").read_text())["slide"]["mpp"]["x"] == 0.5


def test_missing_or_broken_model_folder(tmp_path, tiny_model_dir):
    with pytest.raises(ModelError, match="nowhere"):
        segment_slide(CMU_SLIDE, tmp_path / "out", SegmentParams(model_dir=tmp_path / "nowhere"))
    broken = tmp_path / "broken_model"
    shutil.copytree(tiny_model_dir, broken)
    os.remove(broken / "model.safetensors")
    with pytest.raises(ModelError, match=r"model\.safetensors"):
        segment_slide(CMU_SLIDE, tmp_path / "out", SegmentParams(model_dir=broken))
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(tmp_path, tiny_model_dir):
    if os.geteuid() == 0:
        target = tmp_path / "file-not-folder"
        target.write_text("x")  # root ignores permissions: use a path that cannot be a folder
        out = target / "out"
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    with pytest.raises(OutputError, match="--out"):
        segment_slide(CMU_SLIDE, out, SegmentParams(model_dir=tiny_model_dir))


def test_polygons_valid_after_union(cmu_run):
    result, _, _ = cmu_run
    fc = json.loads((result.out_dir / "tissue.geojson").read_text())
    union = shapely.union_all([shape(f["geometry"]) for f in fc["features"][1:]])
    assert union.is_valid


def test_optional_ome_tiff_and_tile_objects(tmp_path, tiny_model_dir, cmu_region_slide):
    """On a crop of CMU (all of it tissue: too small to detect it on): the files, not the
    slide's size, are the subject."""
    import tifffile

    params = SegmentParams(
        model_dir=tiny_model_dir,
        mpp=0.499,
        tissue="all",
        extra_outputs=frozenset({"ome_tiff", "tile_objects"}),
    )
    result = segment_slide(cmu_region_slide, tmp_path, params)
    assert result.summary["output"]["files"] == [
        "probabilities.ome.zarr",
        "tissue.geojson",
        "overlay.png",
        "overlay-thumbnail.jpg",
        "summary.json",
        "probabilities.ome.tif",
        "tiles.geojson",
    ]
    assert (
        result.summary["parameters"]["ome_tiff"],
        result.summary["parameters"]["tile_objects"],
    ) == (True, True)
    probs = zarr.open_group(str(result.out_dir / "probabilities.ome.zarr"))["0/0"]
    with tifffile.TiffFile(result.out_dir / "probabilities.ome.tif") as tif:
        assert tif.series[0].shape == probs.shape
        np.testing.assert_array_equal(tif.series[0].asarray(), probs[:])
        file_id = tifffile.xml2dict(tif.ome_metadata)["OME"]["UUID"]
    # the run's own id (its fingerprint's), not a time-based one: the same run, the same bytes
    run_id = result.summary["fingerprint"]
    assert file_id == f"urn:uuid:{output_id(f'{run_id}/probabilities.ome.tif')}"
    tiles = json.loads((result.out_dir / "tiles.geojson").read_text())["features"]
    assert tiles and all(t["properties"]["objectType"] == "tile" for t in tiles)
    assert "tiles.geojson" in result.summary["output"]["files"]


def test_the_stage_sequence_closes_the_slide_it_prepared(
    tmp_path, tiny_model_dir, cmu_region_slide
):
    """`run_stages` (behind `segment_slide` and the Prefect flows) closes the slide when the
    run returns, done or found up to date once prepared (another run finished the slide
    meanwhile), instead of leaving its file to the garbage collector. A plain rerun of a
    finished slide prepares nothing. On a crop of CMU, all of it tissue: the slide's file
    is the subject, not its size."""
    from wsi_segment.pipeline import segment

    prepared = []
    finished_meanwhile = []

    def prepare_and_keep(path, root, params):
        prepared.append(segment.prepare(path, root, params))
        for done in finished_meanwhile:
            shutil.copytree(done, prepared[-1].out_dir)
        return prepared[-1]

    stages = segment.Stages(
        prepare_and_keep, lambda prep, work_dir: segment.infer(prep, work_dir), segment.finish
    )
    params = SegmentParams(
        model_dir=tiny_model_dir, backend="tiffslide", device="cpu", mpp=0.499, tissue="all"
    )
    slide = cmu_region_slide
    first = segment.run_stages(slide, tmp_path / "a", params, stages)
    assert first.status == "done"
    assert segment.run_stages(slide, tmp_path / "a", params, stages).status == "up-to-date"
    assert len(prepared) == 1
    finished_meanwhile.append(first.out_dir)
    assert segment.run_stages(slide, tmp_path / "b", params, stages).status == "up-to-date"
    assert [p.slide._reader for p in prepared] == [None, None]  # closed


def test_overlay_shows_the_thumbnail_tissue_detection_saw(cmu_run):
    """overlay.png is `Slide.thumbnail` with class colours blended in: every pixel is the
    thumbnail's own or its blend with one class colour (alpha 0.4), nothing else."""
    from PIL import Image

    from wsi_segment.models.bundle import demo_model_dir
    from wsi_segment.models.meta import read_model_json
    from wsi_segment.pipeline.outputs.finish_outputs import THUMB_SIZE
    from wsi_segment.wsi.slide import open_slide

    result, _, _ = cmu_run
    with open_slide(CMU_SLIDE) as slide:
        thumb, _ = slide.thumbnail(THUMB_SIZE)
    h, w = thumb.shape[:2]
    overlay = np.asarray(Image.open(result.out_dir / "overlay.png").convert("RGB"))[:h, :w]
    colors = read_model_json(demo_model_dir())[1].colors
    t = thumb.astype(np.float32)
    candidates = [t] + [0.6 * t + 0.4 * np.asarray(c, np.float32) for c in colors]
    explained = np.zeros((h, w), bool)
    for cand in candidates:
        explained |= (np.abs(np.rint(cand) - overlay) <= 0.5).all(axis=2)
    assert explained.all()
    assert (overlay == thumb).all(axis=2).mean() > 0.05  # glass around the tissue stays as is


# A CLI run in a fresh interpreter, as `wsi-segment` runs: what it imported by its end.
_CLI_RUN = """
import json, sys
from wsi_segment.flows.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def test_a_warm_openvino_run_never_imports_torch(
    tmp_path, tiny_model_dir, runtime_cache, cmu_region_slide
):
    """torch's import is 2-3 s and 0.6 GB of a small CPU run: once the model's graph is
    compiled and checked (by the first run here, or an earlier test of this run), a run in
    OpenVINO reads, batches, infers, stitches and writes without it, the same bytes. On a
    crop of CMU, all of it tissue: the imports, not the slide's size, are the subject."""
    import subprocess
    import sys

    pytest.importorskip("openvino")
    options = ["--model", str(tiny_model_dir), "--runtime", "openvino", "--precision", "fp32"]
    options += ["--device", "cpu", "--mpp", "0.499", "--tissue", "all", "--quiet"]
    runs = {}
    for name in ("first", "warm"):
        argv = [sys.executable, "-c", _CLI_RUN, str(cmu_region_slide)]
        argv += ["--out", str(tmp_path / name)]
        done = subprocess.run(argv + options, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["first"]["code"] == runs["warm"]["code"] == 0
    assert not runs["warm"]["torch"]
    first, warm = (tmp_path / name / cmu_region_slide.stem for name in runs)
    written = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(written) > 10 and written == sorted(
        p.relative_to(warm) for p in warm.rglob("*") if p.is_file()
    )
    for path in written:
        if path.name != "summary.json":  # its timings and time stamp differ
            assert (first / path).read_bytes() == (warm / path).read_bytes(), path
