"""Same input, same bytes under `--precision auto`: one region of the CMU slide gives the
same zarr chunks, class geometry and per-region areas whatever other regions the `--roi`
file holds, and in whatever order (the precision never depends on which tiles come first).

'auto' calibrates bf16 only on a CPU with AMX; elsewhere it is plain fp32 and the choice
cannot vary. So each test runs twice: on this machine as probed, and on a description of it
with AMX (the `Machine` a local run's plan is decided from, handed to the one place a run
probes, `prepare`), so that the calibration and its bf16 forward passes run for real on every
machine (autocast bf16 runs on any x86 CPU, in hardware where it has AVX512-BF16). The CPU's
own flags are never pretended: what OpenVINO compiles and caches is this CPU's either way,
and each run's bytes are compared with another run's under the same description."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely
from shapely.geometry import box, shape

from tests.conftest import CMU_SLIDE, plan_spec, what_ran
from wsi_segment.models.bundle import load_bundle
from wsi_segment.models.cpu import AMX_FLAG
from wsi_segment.models.runtimes.decision import openvino_bf16_candidate
from wsi_segment.models.runtimes.select import open_runtime
from wsi_segment.pipeline import prepare
from wsi_segment.pipeline.inference import model_handle
from wsi_segment.pipeline.machine import Machine, probe_machine
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide

# Level-0 boxes (x0, y0, x1, y1) on tissue. With the tiny model's 64 px zarr chunks (8 x 8
# tile cores of 8 px) at 16 level-0 px per output pixel, A's chunks (columns 0-1, rows 0-1:
# level-0 x and y below 2052) hold no other region.
A = (700, 900, 1500, 1700)
OTHERS = {
    "B": (300, 2200, 1300, 2900),
    "C": (1700, 2200, 2150, 2700),
    "D": (1400, 2100, 1650, 2600),
}
A_CHUNKS = [(y, x) for y in (0, 1) for x in (0, 1)]
AMX_FLAGS = frozenset({AMX_FLAG, "amx_tile"})  # what /proc/cpuinfo lists on a CPU with AMX


@pytest.fixture(params=["this-cpu", "amx"])
def cpu(request, monkeypatch) -> Iterator[Machine]:
    """The machine the runs are planned for: this one as probed, or its description with AMX
    (handed to `prepare`, where a local run probes); no model loaded under the other is
    reused."""
    machine = probe_machine()
    if request.param == "amx":
        machine = dataclasses.replace(machine, cpu_flags=machine.cpu_flags | AMX_FLAGS)
        monkeypatch.setattr(prepare, "probe_machine", lambda: machine)
    # a process cache of its own: nothing loaded under the other machine is reused
    monkeypatch.setattr(model_handle, "PROCESS_MODELS", model_handle.ProcessModels())
    yield machine


def write_rois(path: Path, names: list[str]) -> Path:
    boxes = {"A": A, **OTHERS}
    features = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(box(*boxes[name])),
            "properties": {"objectType": "annotation", "name": name},
        }
        for name in names
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def region_a(out_dir: Path) -> tuple[dict[str, bytes | None], dict[str, bytes], object, object]:
    """A's zarr chunk files, its class geometry (normalised WKB), its report, the precision."""
    summary = json.loads((out_dir / "summary.json").read_text())
    level = out_dir / "probabilities.ome.zarr" / "0" / "0"  # series 0, level 0
    channels = len(summary["classes"])
    chunks: dict[str, bytes | None] = {}
    for c in range(channels):
        for y, x in A_CHUNKS:
            f = level / str(c) / str(y) / str(x)
            chunks[f"{c}/{y}/{x}"] = f.read_bytes() if f.exists() else None
    geo = json.loads((out_dir / "tissue.geojson").read_text())
    shapes = {}
    for feature in geo["features"]:
        if feature["properties"].get("metadata", {}).get("wsi_segment") == "region":
            continue
        name = feature["properties"]["classification"]["name"]
        clipped = shapely.normalize(shape(feature["geometry"]).intersection(box(*A)))
        shapes[name] = shapely.to_wkb(clipped)
    (report,) = [r for r in summary["rois"] if r["name"] == "A"]
    return chunks, shapes, report, what_ran(summary["precision"])


def run_roi_sets(
    tmp_path: Path, model_dir: Path, roi_sets: list[list[str]], machine: Machine
) -> list:
    """Run each ROI set; every run's precision record is the one the model gives when it is
    loaded alone, with no slide (a choice made from a run's tiles would differ from it)."""
    model = load_bundle(model_dir)
    spec = plan_spec("auto", "auto", model.meta.tile_size, machine)
    alone = open_runtime(model, spec).report()
    openvino_bf16 = alone["runtime"] == "openvino" and openvino_bf16_candidate(machine.cpu_flags)
    calibrated = machine.amx or openvino_bf16
    assert (alone["calibration"] is not None) == calibrated  # 'auto' took that path
    results = []
    for i, names in enumerate(roi_sets):
        roi = write_rois(tmp_path / f"roi{i}.geojson", names)
        params = SegmentParams(model_dir=model_dir, roi=roi, precision="auto")
        result = segment_slide(CMU_SLIDE, tmp_path / f"out{i}", params)
        assert result.status == "done"
        summary = json.loads((result.out_dir / "summary.json").read_text())
        assert [r["name"] for r in summary["rois"]] == names
        assert all(r["tissue_area_um2"] > 0 for r in summary["rois"])  # every region ran
        results.append(region_a(result.out_dir))
    chunks, shapes, report, precision = results[0]
    assert sum(v is not None for v in chunks.values()) >= 8  # A's tissue was written
    assert set(shapes) >= {"Tissue", "TE"} and report["tissue_area_um2"] > 1e5
    assert precision == alone  # summary.json says what ran and why, the same every run
    return results


def test_one_region_gives_the_same_bytes_beside_another(tmp_path, tiny_model_dir, cpu):
    first, second = run_roi_sets(tmp_path, tiny_model_dir, [["A"], ["B", "A"]], cpu)
    assert second == first


@pytest.mark.slow
def test_one_region_gives_the_same_bytes_in_five_roi_sets(tmp_path, tiny_model_dir, cpu):
    sets = [["A"], ["B", "A"], ["C", "A", "D"], ["A", "D"], ["D", "C", "B", "A"]]
    first, *others = run_roi_sets(tmp_path, tiny_model_dir, sets, cpu)
    for other in others:
        assert other == first
