"""Bad slides through the real CLI: one clear `error:` line each, exit 1, nothing written.

Covers: missing path, a directory, an empty file, a text file named .svs, the real broken
.svs fixture, the CMU slide truncated at several offsets, no mpp without --mpp, a slide
smaller than one tile, a slide with no tissue (valid outputs saying so), and corrupt tile
data in the middle of the slide (the error names the region).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CMU_SLIDE, DATA_DIR, corrupt_middle_tile
from tests.lab_users import lab_folder, lab_users  # noqa: F401
from tests.reliability.conftest import (
    CLI,
    CliResult,
    assert_clean_error,
    assert_complete_output,
    assert_nothing_written,
    leftovers,
    run_cli,
    run_cli_inprocess,
    write_tiff,
)

# Byte offsets at which the CMU slide (1,938,955 bytes) is cut. Its level-0 tiles come
# first and the TIFF directory after them (at 1,275,950), so these cut: the header, the
# middle of the tile data, the directory itself, its tile-offset array (tifffile then
# reads the slide as black without an error: fixed in wsi/backends.py) and its JPEG tables.
TRUNCATIONS = (0, 8, 1000, 700_000, 1_275_960, 1_276_500, 1_277_000, 1_277_950)
# Each error names what is wrong and what to do about it.
NOT_A_SLIDE_FIX = ("truncated, corrupt or of an unsupported format", "copy it again")
DAMAGED_FIX = ("truncated or corrupt", "copy it again from its source", "re-export")


def float_slide(path: Path) -> Path:
    """A plain tiled TIFF of float samples (an analysis export, not a scan): openslide opens
    it and cannot decode it, tiffslide reads it; it was called truncated or corrupt."""
    import tifffile

    pixels = np.random.default_rng(3).random((512, 512, 3), dtype=np.float32)
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory, cmu_bytes) -> dict[str, tuple]:
    """name -> (path, words the error must contain: the problem and the fix)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.svs").write_bytes(b"")
    (d / "text.svs").write_text("this is not a slide\n" * 50)
    (d / "folder.svs").mkdir()
    cases = {
        "missing": (d / "missing.svs", ("no such file", "check the path", "a slide file")),
        "directory": (d / "folder.svs", ("is a directory", "pass the slide file itself")),
        "empty": (d / "empty.svs", NOT_A_SLIDE_FIX),
        "text": (d / "text.svs", NOT_A_SLIDE_FIX),
        "broken": (DATA_DIR / "broken.svs", NOT_A_SLIDE_FIX),
        "float": (float_slide(d / "float.tif"), ("float32 pixel samples", "8 bits per sample")),
    }
    for off in TRUNCATIONS:
        path = d / f"cmu_cut_{off}.svs"
        path.write_bytes(cmu_bytes[:off])
        # cut inside the JPEG tables: opens, then the first read fails
        fix = DAMAGED_FIX if off == 1_277_950 else NOT_A_SLIDE_FIX
        cases[f"cut_{off}"] = (path, fix)
    return cases


def test_all_bad_slides_in_one_real_cli_run(bad_slides, tiny_model_dir, tmp_path):
    """One subprocess, every bad slide: each gets its own error line, the run goes on."""
    out = tmp_path / "out"
    paths = [path for path, _ in bad_slides.values()]
    good = DATA_DIR / "small.svs"  # a valid (tiny) slide after them: it still runs
    result = run_cli([*paths, good, "--model", tiny_model_dir, "--out", out, "--quiet"])
    assert_clean_error(result, count=len(paths))  # exit 1: some slides failed
    lines = result.error_lines
    for (path, fix), line in zip(bad_slides.values(), lines, strict=True):
        assert path.name in line and all(words in line for words in fix), line
    assert "small.svs: done" in result.stdout
    assert_complete_output(out / "small")
    assert leftovers(out) == ["small"]


@pytest.mark.parametrize(
    "case",
    [
        *("missing", "directory", "empty", "text", "broken", "float"),
        *[f"cut_{o}" for o in TRUNCATIONS],
    ],
)
def test_bad_slide(case, bad_slides, tiny_model_dir, tmp_path, capsys):
    path, fix = bad_slides[case]
    out = tmp_path / "out"
    result = run_cli_inprocess([path, "--model", tiny_model_dir, "--out", out, "--quiet"], capsys)
    assert_clean_error(result, path.name, *fix)
    assert_nothing_written(out)


def test_truncated_after_level0_still_gives_valid_output(
    cmu_bytes, tiny_model_dir, tmp_path, capsys
):
    """Cut after the level-0 tiles and directory (only associated images lost): the pixels
    are all there, so a valid run is the right outcome."""
    path = tmp_path / "cmu_cut_tail.svs"
    path.write_bytes(cmu_bytes[:1_600_000])
    out = tmp_path / "out"
    args = [path, "--model", tiny_model_dir, "--out", out, "--quiet", "--mpp", "0.1"]
    result = run_cli_inprocess(args, capsys)
    assert result.code == 0, result.stderr
    assert_complete_output(out / path.stem)


def test_no_mpp_needs_the_option_then_works(cmu_crop, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli_inprocess([cmu_crop, "--model", tiny_model_dir, "--out", out], capsys)
    assert_clean_error(result, cmu_crop.name, "--mpp")
    assert_nothing_written(out)
    args = [cmu_crop, "--model", tiny_model_dir, "--out", out, "--quiet", "--mpp", "0.5"]
    result = run_cli_inprocess(args, capsys)
    assert result.code == 0, result.stderr
    summary = assert_complete_output(out / cmu_crop.stem)
    assert summary["slide"]["mpp"]["x"] == 0.5


def test_slide_smaller_than_one_tile(tiny_model_dir, tmp_path, capsys):
    """small.svs is 16 x 16 px (4 x 4 model px for a 64-px tile): valid, tiny outputs."""
    out = tmp_path / "out"
    slide = DATA_DIR / "small.svs"
    result = run_cli_inprocess([slide, "--model", tiny_model_dir, "--out", out, "--quiet"], capsys)
    assert result.code == 0, result.stderr
    assert_complete_output(out / "small")
    import zarr

    level0 = zarr.open_group(str(out / "small" / "probabilities.ome.zarr"), mode="r")["0/0"]
    assert level0.shape == (4, 1, 1)  # ceil(ceil(16 * 0.499 / 2) / 4) = 1 output pixel


def test_slide_with_no_tissue_gives_valid_outputs_saying_so(tiny_model_dir, tmp_path, capsys):
    blank = write_tiff(tmp_path / "blank.tif", np.full((600, 900, 3), 250, np.uint8))
    out = tmp_path / "out"
    args = [blank, "--model", tiny_model_dir, "--out", out, "--quiet", "--mpp", "0.5"]
    result = run_cli_inprocess(args, capsys)
    assert result.code == 0, result.stderr
    summary = assert_complete_output(out / "blank")
    assert "no tissue" in summary["tissue"]["note"]
    assert summary["tissue"]["area_um2"] == 0
    assert all(c["area_um2"] == 0 for c in summary["classes"].values())
    fc = json.loads((out / "blank" / "tissue.geojson").read_text())
    assert fc["type"] == "FeatureCollection"


def test_corrupt_tile_in_the_middle_names_the_region(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "cmu_corrupt_tile.svs"
    x, y = corrupt_middle_tile(CMU_SLIDE, path)
    out = tmp_path / "out"
    args = [path, "--model", tiny_model_dir, "--out", out, "--quiet", "--mpp", "0.1"]
    result = run_cli_inprocess(args, capsys)
    text = assert_clean_error(result, path.name, "region", *DAMAGED_FIX)
    # the region named (level-0 location and size) contains the damaged tile
    import re

    m = re.search(r"region \((\d+), (\d+)\) size \((\d+), (\d+)\)", text)
    if m:
        rx, ry, rw, rh = map(int, m.groups())
        assert rx <= x < rx + rw and ry <= y < ry + rh, (text, x, y)
    else:
        assert "model pixels" in text, text
    assert_nothing_written(out)


@pytest.mark.parametrize("command", ["segment", "info"])
def test_a_url_holding_a_password_is_refused_without_showing_it(
    command, tiny_model_dir, tmp_path, capsys
):
    """`https://user:secret@host/x.svs` put the password into summary.json, cohort.csv and
    the logs (and any user reads a command line with `ps`)."""
    url = "http://alice:S3CRET@127.0.0.1:9/slides/x.svs"
    out = tmp_path / "out"
    args = ["info", url] if command == "info" else [url, "--model", tiny_model_dir, "--out", out]
    result = run_cli_inprocess(args, capsys)
    text = assert_clean_error(result, "http://alice:***@127.0.0.1:9/slides/x.svs", "password")
    assert "S3CRET" not in result.stderr + result.stdout and "AWS_ACCESS_KEY_ID" in text
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "url",
    ["s3://no-such-bucket-wsi-segment/x.svs", "http://127.0.0.1:9/x.svs", "nosuchproto://x/y.svs"],
    ids=["s3-no-credentials", "http-refused", "unknown-protocol"],
)
def test_unreachable_urls(url, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli_inprocess([url, "--model", tiny_model_dir, "--out", out, "--quiet"], capsys)
    assert_clean_error(result, url, "check the URL", "credentials")
    assert_nothing_written(out)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_special_files_are_refused_not_read(kind, tiny_model_dir, tmp_path, capsys):
    """A named pipe called .svs used to block the slide readers forever (fixed in wsi/slide.py)."""
    import os

    path = tmp_path / f"{kind}.svs"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    out = tmp_path / "out"
    result = run_cli_inprocess([path, "--model", tiny_model_dir, "--out", out, "--quiet"], capsys)
    assert_clean_error(result, "not a regular file", "pass the slide file")
    assert_nothing_written(out)


def test_a_legal_name_too_long_for_the_work_folder_is_refused_up_front(
    cmu_crop, tiny_model_dir, tmp_path, capsys
):
    """A 251-byte slide file name is legal, but `.<name>.partial` (256 bytes) is not: the run
    failed when it made its work folder, and left the --out it had made. The crop of the CMU
    slide: the name is the subject, not the pixels (the whole slide cost 5 CPU s more)."""
    path = tmp_path / f"{'b' * 247}.tif"
    path.write_bytes(cmu_crop.read_bytes())
    out = tmp_path / "new" / "out"
    args = ["--model", tiny_model_dir, "--out", out, "--quiet", "--mpp", "0.5"]
    result = run_cli_inprocess([path, *args], capsys)
    assert_clean_error(result, "output folder name is 247 bytes", "at most 246 bytes")
    assert not (tmp_path / "new").exists()
    fits = tmp_path / f"{'b' * 246}.tif"  # its work folder's name: 255 bytes
    path.rename(fits)
    result = run_cli_inprocess([fits, *args], capsys)
    assert result.code == 0, result.stderr


def test_a_name_too_long_is_said_not_a_traceback(tiny_model_dir, tmp_path, capsys):
    """Python's `Path.exists` raises for ENAMETOOLONG (and EACCES): that was a traceback."""
    path = tmp_path / f"{'a' * 300}.svs"
    out = tmp_path / "out"
    for args in ([path, "--model", tiny_model_dir, "--out", out, "--quiet"], ["info", path]):
        result = run_cli_inprocess(args, capsys)
        assert_clean_error(result, str(path), "file name too long", "check the path")
    assert_nothing_written(out)


def test_a_slide_another_user_may_not_read_says_so(lab_users):  # noqa: F811
    """Run as a real other user (the kernel refuses, not the test): a slide in a folder it
    may not enter (stat fails: was a traceback) and a slide it may not read (it opens: was
    "truncated or corrupt; copy it again") each name the user and the fix."""
    import shutil

    from tests.conftest import CMU_SLIDE

    private = lab_users.root / "private"
    private.mkdir(mode=0o700)
    (private / "a.svs").write_bytes(CMU_SLIDE.read_bytes())
    unreadable = lab_users.root / "b.svs"
    shutil.copyfile(CMU_SLIDE, unreadable)
    unreadable.chmod(0o600)
    user = lab_users.service
    out = lab_folder(lab_users.root / "out", user)
    for slide in (private / "a.svs", unreadable):
        for args in (["info", str(slide)], [str(slide), "--out", str(out)]):
            done = lab_users.run(user, [*CLI, *args])
            result = CliResult(done.returncode, done.stdout, done.stderr)
            assert_clean_error(result, str(slide), f"permission denied (user {user}", "read access")
    assert_nothing_written(out, existed=True)


@pytest.fixture(scope="module")
def pyramid_with_bad_chunk_tile(tmp_path_factory):
    """A 4-level JPEG pyramid of the CMU slide (x2 upsampled at level 0, openslide's generic
    TIFF) whose middle level-3 tile is damaged: tissue detection reads level 2 and succeeds,
    the chunks read level 3 (for the tiny model at --mpp 0.25) and hit the damage mid-run,
    while other chunks are in flight on other threads."""
    import tifffile
    from PIL import Image

    from tests.conftest import CMU_SLIDE
    from wsi_segment.wsi.slide import open_slide

    with open_slide(CMU_SLIDE) as slide:
        cmu = slide.read_region((0, 0), 0, slide.dimensions)
    image = Image.fromarray(cmu)
    levels = [np.asarray(image.resize((4440, 5934))), cmu]
    levels += [np.asarray(image.resize((1110, 1484))), np.asarray(image.resize((555, 742)))]
    path = tmp_path_factory.mktemp("pyramid") / "pyramid_bad_tile.tif"
    with tifffile.TiffWriter(path) as tw:
        for k, level in enumerate(levels):
            tw.write(
                level,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                subfiletype=1 if k else 0,
            )
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[3]
        offset, count = page.dataoffsets[4], page.databytecounts[4]  # middle of 3 x 3
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    data[offset + count // 3 : offset + count] = rng.integers(
        0, 256, count - count // 3, dtype=np.uint8
    ).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_damaged_tile_hit_mid_run_by_a_chunk(
    pyramid_with_bad_chunk_tile, tiny_model_dir, tmp_path, capsys
):
    """The error names the region; chunks still running on other threads must not write
    into the removed partial folder (they did, in the per-chunk path the engine replaced)."""
    import time

    path = pyramid_with_bad_chunk_tile
    out = tmp_path / "out"
    args = [path, "--model", tiny_model_dir, "--out", out, "--mpp", "0.25", "--quiet"]
    result = run_cli_inprocess([*args, "--threads", "2"], capsys)
    assert_clean_error(result, path.name, "cannot read region", "at level 3", *DAMAGED_FIX)
    time.sleep(1.0)  # a straggling chunk thread would have written by now
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("one_px", (1, 1)), ("row", (1, 400)), ("column", (400, 2)), ("three_px", (3, 3))],
)
def test_degenerate_slide_shapes_give_valid_outputs(
    cmu_crop, tiny_model_dir, tmp_path, capsys, name, shape
):
    import tifffile

    image = tifffile.imread(cmu_crop)[: shape[0], : shape[1]]
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, np.ascontiguousarray(image), photometric="rgb")
    out = tmp_path / "out"
    args = [path, "--model", tiny_model_dir, "--out", out, "--mpp", "0.5", "--quiet"]
    result = run_cli_inprocess(args, capsys)
    assert result.code == 0, result.stderr
    assert_complete_output(out / name)


@pytest.mark.slow  # a cluster of its own; test_dask_bands' damaged slide covers the cluster error path
def test_damaged_tile_on_a_cluster_leaves_nothing_behind(
    pyramid_with_bad_chunk_tile, tiny_model_dir, tmp_path
):
    """Same damage on a real LocalCluster (2 worker processes): the slide fails with the
    region named and leaves nothing. The race it guards (a chunk still running on the other
    worker writing after the failure) needs slow chunks to show; with the tiny model it
    rarely does, so this checks the cluster error path, and band_runner's abort event +
    wait-for-all makes the race impossible by construction."""
    import time

    from wsi_segment.errors import SlideError
    from wsi_segment.flows.dask_cluster import dask_client
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    out = tmp_path / "out"
    # torch: the cluster's error path (auto on a cluster is tests/flows/test_dask.py's)
    params = SegmentParams(model_dir=Path(tiny_model_dir), mpp=0.25, chunk_tiles=2, runtime="torch")
    with dask_client(workers=2, threads=1) as client:
        client.wait_for_workers(2, timeout=120)
        with pytest.raises(SlideError, match="cannot read region") as failed:
            segment_slide(pyramid_with_bad_chunk_tile, out, params, client=client)
        assert "at level 3" in str(failed.value)
        time.sleep(1.0)
        assert_nothing_written(out)
        assert not [t for t in client.processing().values() if t], "chunks still running"


@pytest.fixture(scope="module")
def absurd_slide(tmp_path_factory) -> Path:
    """746 KB: a single-level tiled-JPEG TIFF declaring 10^6 x 10^6 px, one tile stored."""
    from tests.wsi.test_slide_limits import write_sparse_tiff

    return write_sparse_tiff(tmp_path_factory.mktemp("absurd") / "absurd.tif", 10**6, 10**6)


ABSURD_FIX = ("declares 1000000 x 1000000 px", "most of its tiles are not stored", "copy it")


@pytest.mark.timeout(120)
def test_absurd_slide_is_refused_at_once_by_the_real_cli(absurd_slide, tiny_model_dir, tmp_path):
    """Once tissue detection decoded for minutes; now one error before anything is read."""
    out = tmp_path / "out"
    result = run_cli([absurd_slide, "--model", tiny_model_dir, "--out", out, "--quiet"])
    assert_clean_error(result, str(absurd_slide), *ABSURD_FIX)
    assert_nothing_written(out)


@pytest.mark.timeout(60)
def test_absurd_slide_with_tissue_all_plans_nothing(absurd_slide, tiny_model_dir, tmp_path, capsys):
    """`--tissue all` once planned chunks over the declared size until memory ran out."""
    out = tmp_path / "out"
    args = [absurd_slide, "--model", tiny_model_dir, "--out", out, "--tissue", "all", "--quiet"]
    result = run_cli_inprocess(args, capsys)
    assert_clean_error(result, str(absurd_slide), *ABSURD_FIX)
    assert_nothing_written(out)
