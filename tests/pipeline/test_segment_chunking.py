"""Same slide, model, parameters and machine -> the same bytes, whatever the chunk size or the
`--roi` set: a tile's pixels are a function of its position on the global grid alone (read
scales that are not whole included: CMU-1 is read at 1 / 0.499 = 2.004 level px per model
px by the demo model, 4.008 by the tiny one), and the chunks' totals and polygons do not
depend on how they were cut. The demo model (224 px tiles, trained) runs here: it is what
showed 1/255 differences from resampling whole chunks, which the random tiny model is too flat
to show (tests/pipeline/inference/test_tile_reader.py and
tests/pipeline/outputs/test_chunk_summary.py check the two causes in a second each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import CMU_SLIDE
from tests.wsi import qupath_exports as qp
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide

ZARR = "probabilities.ome.zarr"


def run(model_dir: Path | None, out: Path, **params: object) -> Path:
    result = segment_slide(CMU_SLIDE, out, SegmentParams(model_dir=model_dir, **params))
    assert result.status == "done" and result.out_dir is not None
    return result.out_dir


def arrays(out_dir: Path) -> dict[str, np.ndarray]:
    """Every array of the store (probabilities and labels, each pyramid level) by its path."""
    found: dict[str, np.ndarray] = {}

    def walk(group: zarr.Group, prefix: str) -> None:
        for name, array in group.arrays():
            found[prefix + name] = np.asarray(array[:])
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(out_dir / ZARR), mode="r"), "")
    return found


DEMO_MPP = 1.0  # the shipped demo model's (model_dir None)


@pytest.fixture(scope="module")
def by_chunk_tiles(tmp_path_factory) -> dict[int, Path]:
    tmp = tmp_path_factory.mktemp("chunking")
    return {
        n: run(None, tmp / str(n), chunk_tiles=n, device="cpu", runtime="torch") for n in (2, 4, 8)
    }


def files(out_dir: Path) -> dict[str, bytes]:
    """Every file of a slide's output folder (the zarr store's chunks and metadata included)
    by its path in the folder."""
    return {
        p.relative_to(out_dir).as_posix(): p.read_bytes()
        for p in sorted(out_dir.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # three runs of the demo model, ~30 s
@pytest.mark.parametrize("n", [2, 8])
def test_chunk_tiles_change_no_byte_of_the_outputs(by_chunk_tiles, n):
    """Every file of the output folder is byte-identical to the 4 x 4 run: the zarr store
    (every chunk file of the probabilities and labels at each pyramid level, and its metadata:
    the zarr chunks are 8 x 8 tile cores whatever --chunk-tiles), tissue.geojson, overlay.png.
    summary.json differs only where it records the chunk setting and the run's own figures
    (parameters.chunk_tiles, run_policy, timings and run statistics)."""
    ref, other = by_chunk_tiles[4], by_chunk_tiles[n]
    want, got = files(ref), files(other)
    assert (np.asarray(zarr.open_array(str(ref / ZARR / "0" / "0"))[:]) > 0).any()
    assert any(name.startswith(f"{ZARR}/0/labels/classes/0/") for name in want)
    assert sorted(got) == sorted(want)
    for name in want:
        if name != "summary.json":
            assert got[name] == want[name], name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref, other))
    assert sorted(a) == sorted(b)
    differ = {key for key in a if a[key] != b[key]}
    # the run's own record: when, how long, the policy, reads and engine (speed), how many chunks
    assert differ <= {
        "created_utc",
        "timings_s",
        "run_policy",
        "read_stats",
        "engine",
        "parameters",
        "tiling",
    }
    assert {k for k in a["parameters"] if a["parameters"][k] != b["parameters"][k]} == {
        "chunk_tiles"
    }
    assert {k for k in a["tiling"] if a["tiling"][k] != b["tiling"][k]} <= {"chunks"}
    assert b["parameters"]["chunk_tiles"] == n


def test_a_region_gets_the_same_bytes_whatever_other_regions_run(tmp_path):
    """One region drawn with a neighbour that shares its chunks, or with a region far away:
    inside it, the probabilities and labels are the same bytes (the chunk's read box, and
    so the resampled image, differs between the two runs)."""
    shared = qp.annotation(qp.rect(700, 900, 1200, 1400), "shared", name="shared")
    near = qp.annotation(qp.rect(150, 700, 450, 1400), "near", name="near")  # same chunk
    far = qp.annotation(qp.rect(300, 2200, 800, 2700), "far", name="far")
    runs = []
    for name, other in (("near", near), ("far", far)):
        roi = qp.export(tmp_path / f"{name}.geojson", [shared, other])
        runs.append(arrays(run(None, tmp_path / name, roi=roi, chunk_tiles=4, device="cpu")))
    level0_per_output = DEMO_MPP / 0.499 * 4  # model px x output downsample 4, in level-0 px
    # output pixels wholly inside the shared rectangle
    x0, x1 = int(np.ceil(700 / level0_per_output)), int(1200 // level0_per_output)
    y0, y1 = int(np.ceil(900 / level0_per_output)), int(1400 // level0_per_output)
    probs = [r["0/0"][:, y0:y1, x0:x1] for r in runs]
    labels = [r["0/labels/classes/0"][y0:y1, x0:x1] for r in runs]
    assert (labels[0] > 0).sum() > 200  # tissue, labelled
    assert probs[0].tobytes() == probs[1].tobytes()
    assert labels[0].tobytes() == labels[1].tobytes()
