"""A decoder process starts light: it imports numpy and the slide code, and is sent only
what it reads with (a `TileReader`: no tissue mask, no model)."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys

from tests.conftest import CMU_SLIDE
from wsi_segment.pipeline.inference.tile_reader import TileReader
from wsi_segment.wsi.slide import open_slide
from wsi_segment.wsi.tiling import TileGrid, plan_chunks
from wsi_segment.wsi.tissue import whole_slide

HEAVY = ("torch", "zarr", "shapely", "rasterio", "timm", "dask", "prefect")

# What a spawned decoder runs: the decoder module, its unpickled arguments, one chunk's tiles
# read; then the heavy modules it ended up with.
CHILD = """
import base64, pickle, sys
from wsi_segment.pipeline.inference import decode_pool
reader, spec = pickle.loads(base64.b64decode(sys.argv[1]))
tiles = reader.read_tiles(spec)
print(len(tiles), [m for m in sys.argv[2].split(",") if m in sys.modules])
"""


def test_a_decoder_imports_no_torch_zarr_shapely_or_rasterio():
    slide = open_slide(CMU_SLIDE)
    grid = TileGrid(tile=64, overlap=16, downsample=4)
    plan = plan_chunks(slide, slide.require_mpp()[0], 2.0, grid, 2, whole_slide(slide))
    reader = TileReader(
        str(CMU_SLIDE), slide.backend, None, plan.level0_per_model, plan.read_level, grid
    )
    slide.close()
    spec = next(s for s in plan.specs if s.tiles)
    payload = pickle.dumps((reader, spec))
    assert len(pickle.dumps(reader)) < 1024  # a few numbers and paths
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    arg = base64.b64encode(payload).decode()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, arg, ",".join(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(spec.tiles)), "[]"]
