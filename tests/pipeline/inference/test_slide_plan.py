"""Planning reads model.json with the models' one parser, and never imports torch (the model
loads beside it), the run policy's chunk size included."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import ModelError
from wsi_segment.models.bundle import demo_model_dir, load_model
from wsi_segment.models.meta import read_model_json
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import prepare

PLAN_WITHOUT_TORCH = """
import json, sys
from pathlib import Path
from wsi_segment.models.meta import read_model_json
from wsi_segment.pipeline.inference.slide_plan import plan_slide, slide_tissue
from wsi_segment.pipeline.machine import probe_machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.run_policy import RunFacts, decide
from wsi_segment.wsi.slide import open_slide

model_dir = Path(sys.argv[2])
_, meta = read_model_json(model_dir)
params = SegmentParams(model_dir=model_dir, device="cpu", precision="fp32")
with open_slide(sys.argv[1]) as slide:
    tissue = slide_tissue(slide, params, [])
    geometry = (meta.tile_size, meta.mpp)
    chunk_tiles = decide(probe_machine(), params, RunFacts()).chunk_tiles.value
    grid, planned = plan_slide(slide, slide.require_mpp(), geometry, params, tissue, chunk_tiles)
print(json.dumps({"geometry": geometry, "tiles": planned.tiles,
                  "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}))
"""


def test_planning_a_slide_never_imports_torch() -> None:
    run = subprocess.run(
        [sys.executable, "-c", PLAN_WITHOUT_TORCH, str(CMU_SLIDE), str(demo_model_dir())],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(run.stdout)
    assert report["torch"] == []
    meta = load_model(demo_model_dir()).meta
    assert report["geometry"] == [meta.tile_size, meta.mpp]
    assert report["tiles"] > 0


def _with_json(src: Path, dst: Path, change: dict | None, text: str | None = None) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "model.json").read_text())
    doc.update(change or {})
    (dst / "model.json").write_text(text if text is not None else json.dumps(doc))
    return dst


@pytest.mark.parametrize(
    ("change", "text", "message"),
    [
        ({"format": "something-else"}, None, "not a wsi-segment model description"),
        ({"format_version": 99}, None, "upgrade wsi-segment"),
        ({"tile_size": -1}, None, "'tile_size' is -1; allowed: an integer from 32 to 2048"),
        ({"mpp": "ten"}, None, "'mpp' is 'ten'; allowed: a number in"),
        (None, "{not json", "not valid JSON"),
    ],
)
def test_planning_and_loading_refuse_the_same_model_json(
    tiny_model_dir: Path, tmp_path: Path, change: dict | None, text: str | None, message: str
) -> None:
    """One parser: what the loader refuses, preparing a slide refuses before it plans, by
    the same message."""
    bad = _with_json(tiny_model_dir, tmp_path / "bad", change, text)
    with pytest.raises(ModelError, match=message) as prepared:
        prepare(CMU_SLIDE, tmp_path / "out", SegmentParams(model_dir=bad, device="cpu"))
    with pytest.raises(ModelError, match=message) as parsed:
        read_model_json(bad)
    with pytest.raises(ModelError) as loaded:
        load_model(bad)
    assert str(loaded.value) == str(parsed.value) == str(prepared.value)


def test_planning_reads_the_loaders_geometry(tiny_model_dir: Path) -> None:
    doc, meta = read_model_json(tiny_model_dir)
    assert (meta.tile_size, meta.mpp) == (64, 2.0)
    assert meta == load_model(tiny_model_dir).meta
    assert doc["weights"]["file"] == "model.safetensors" and "architecture" in doc
