"""The output registry (`pipeline.output_files.OUTPUT_FILES`) is all a new output file takes:
its flag on `segment` and `batch`, its key in the parameters, a flow's options, summary.json
and the fingerprint, its writer's call at the end of a run and the files a finished folder
may hold all come from its one entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import ConfigError
from wsi_segment.flows.cli import build_parser
from wsi_segment.flows.cli_batch import flow_options
from wsi_segment.flows.cli_segment import params_from_args
from wsi_segment.flows.slide_flow import make_params
from wsi_segment.lazy_exports import FunctionRef
from wsi_segment.pipeline.output_files import (
    OUTPUT_FILES,
    OutputFile,
    always_written,
    optional_outputs,
    output_options,
)
from wsi_segment.pipeline.outputs.ownership import not_our_output
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.wsi.tiling import TileGrid

# the parameters' keys in summary.json and a flow's options, as before the registry
PARAMETER_KEYS = [
    "model_dir", "device", "precision", "runtime", "batch_size", "mpp", "output_downsample",
    "overlap", "chunk_tiles", "gate", "overwrite", "backend", "threads", "decoders", "writers",
    "polygon_processes", "read_device", "cuda_graphs", "output_name", "simplify_tolerance", "ome_tiff", "tile_objects",
    "tissue", "read_level", "roi",
]  # fmt: skip


def write_store_shape(
    zarr_path: Path, path: Path, grid: TileGrid, run_id: str, slide_size: tuple[int, int]
) -> None:
    """A trivial extra output: the probability array's shape, the tile core's side, the
    run's fingerprint and the slide's level-0 size."""
    shape = zarr.open_group(str(zarr_path), mode="r")["0/0"].shape
    core = grid.stride // grid.downsample
    path.write_text(f"{list(shape)} {core} {run_id} {list(slide_size)}\n")


EXTRA = OutputFile(
    "store-shape.txt",
    "store_shape",
    "also write store-shape.txt",
    FunctionRef(f"{__name__}:write_store_shape"),
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> OutputFile:
    monkeypatch.setitem(OUTPUT_FILES, EXTRA.name, EXTRA)
    return EXTRA


def test_the_registry_lists_every_file_once_with_its_option_and_writer() -> None:
    assert always_written() == [
        "probabilities.ome.zarr",
        "tissue.geojson",
        "overlay.png",
        "overlay-thumbnail.jpg",
        "summary.json",
    ]
    assert [(o.name, o.option, o.flag) for o in optional_outputs()] == [
        ("probabilities.ome.tif", "ome_tiff", "--ome-tiff"),
        ("tiles.geojson", "tile_objects", "--tile-objects"),
    ]
    for output in optional_outputs():
        assert output.writer is not None and callable(output.writer.resolve())
        assert output.help.startswith(f"also write {output.name}")


def test_parameters_and_fingerprint_keep_their_keys_and_values() -> None:
    """A run made before the registry has the same fingerprint fields (so reruns stay up
    to date) and the same parameters in summary.json."""
    assert SegmentParams().fingerprint_fields() == {
        "mpp": None,
        "precision": "auto",
        "output_downsample": 4,
        "overlap": 32,
        "gate": True,
        "simplify_tolerance": 1.0,
        "backend": "auto",
        "ome_tiff": False,
        "tile_objects": False,
        "runtime": "auto",
    }
    params = SegmentParams(extra_outputs=frozenset({"tile_objects"}))
    assert params.fingerprint_fields()["tile_objects"] is True
    assert list(params.as_dict()) == PARAMETER_KEYS
    assert (params.as_dict()["ome_tiff"], params.as_dict()["tile_objects"]) == (False, True)
    assert SegmentParams.from_dict(params.as_dict()) == params
    assert make_params(None, {"ome_tiff": True}).extra_outputs == {"ome_tiff"}
    with pytest.raises(ConfigError, match="unknown optional output 'png'; choose one of ome_tiff"):
        SegmentParams(extra_outputs=frozenset({"png"}))


def test_a_registered_output_has_a_flag_a_key_and_a_fingerprint(registered: OutputFile) -> None:
    assert output_options() == ["ome_tiff", "tile_objects", "store_shape"]
    parser = build_parser()
    args = parser.parse_args(["segment", "s.svs", "--store-shape", "--ome-tiff"])
    params = params_from_args(args)
    assert params.extra_outputs == {"store_shape", "ome_tiff"}
    assert params.fingerprint_fields()["store_shape"] is True
    assert SegmentParams().fingerprint_fields()["store_shape"] is False
    batch = parser.parse_args(["batch", "slides/", "--store-shape"])
    options = flow_options(params_from_args(batch))
    assert options["store_shape"] is True
    assert make_params(None, options).extra_outputs == {"store_shape"}


def test_a_registered_output_is_written_listed_and_owned(
    registered: OutputFile, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from wsi_segment.pipeline.segment import segment_slide

    params = SegmentParams(
        model_dir=tiny_model_dir, device="cpu", extra_outputs=frozenset({"store_shape"})
    )
    result = segment_slide(str(CMU_SLIDE), tmp_path, params)
    store = zarr.open_group(str(result.out_dir / "probabilities.ome.zarr"), mode="r")["0/0"]
    # a core is (64 - 32) / 4 = 8 output px: the tiny model's tile, the default overlap and
    # output downsample
    summary = json.loads((result.out_dir / "summary.json").read_text())
    want = f"{list(store.shape)} 8 {summary['fingerprint']} [2220, 2967]\n"
    assert (result.out_dir / "store-shape.txt").read_text() == want
    assert summary["output"]["files"][-1] == "store-shape.txt"
    assert summary["parameters"]["store_shape"] is True
    assert not_our_output(result.out_dir) is None
