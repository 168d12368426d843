"""The files of a slide's output folder, one registry line each.

`OUTPUT_FILES` is the one list: the file names the run writes and summary.json lists, what
a finished folder may hold (`pipeline.outputs.ownership`), and for each optional file the
option that asks for it. From that option come the `--<option>` flag of `segment` and
`batch`, the key of `SegmentParams.extra_outputs`, of a flow's JSON options and of
summary.json's parameters, and the fingerprint key that keeps a run with the file apart from
one without. An optional file's writer (`pipeline.outputs.finish_outputs` calls it once the
zarr store is finished) is a `FunctionRef`, so this module, read by the parameters and the
CLI at start-up, imports no writer (nor zarr): pipeline.base stays below pipeline.outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsi_segment.lazy_exports import FunctionRef

STORE_NAME = "probabilities.ome.zarr"  # streamed during inference; the one folder
GEOJSON_NAME = "tissue.geojson"
OVERLAY_NAME = "overlay.png"
THUMBNAIL_NAME = "overlay-thumbnail.jpg"  # the overlay's small picture, for report.html
SUMMARY_NAME = "summary.json"  # written last: what makes a folder a finished output


@dataclass(frozen=True)
class OutputFile:
    """One file of the output folder. `option` (None: always written) names an optional
    file's switch, `help` says what its flag writes, and `writer` writes it from the
    finished store as `(zarr_path, path, grid: wsi.tiling.TileGrid, run_id: str,
    slide_size: tuple[int, int]) -> None` (`run_id`: the run's fingerprint, which ids in the
    file derive from; `slide_size`: the slide's level-0 width and height, where the store's
    last column and row, up to one output pixel past it, are cut)."""

    name: str
    option: str | None = None
    help: str = ""
    writer: FunctionRef | None = None

    @property
    def flag(self) -> str:
        """The command line's switch for the file: `--` and its option, with dashes."""
        return "--" + (self.option or "").replace("_", "-")


def _writer(module: str) -> FunctionRef:
    """`write_output` of a module of `pipeline.outputs`, the registry's writer there."""
    return FunctionRef(f"wsi_segment.pipeline.outputs.{module}:write_output")


# In the order they are written and listed in summary.json.
OUTPUT_FILES: dict[str, OutputFile] = {
    entry.name: entry
    for entry in (
        OutputFile(STORE_NAME),
        OutputFile(GEOJSON_NAME),
        OutputFile(OVERLAY_NAME),
        OutputFile(THUMBNAIL_NAME),
        OutputFile(SUMMARY_NAME),
        OutputFile(
            "probabilities.ome.tif",
            "ome_tiff",
            "also write probabilities.ome.tif for QuPath",
            _writer("ome_tiff"),
        ),
        OutputFile(
            "tiles.geojson",
            "tile_objects",
            "also write tiles.geojson: one QuPath tile per model tile with class probabilities",
            _writer("tile_objects"),
        ),
    )
}


def always_written() -> list[str]:
    """The names of the files every run writes."""
    return [entry.name for entry in OUTPUT_FILES.values() if entry.option is None]


def optional_outputs() -> list[OutputFile]:
    """The files a run writes only when asked (each with its option and writer)."""
    return [entry for entry in OUTPUT_FILES.values() if entry.option is not None]


def output_options() -> list[str]:
    """The options of the optional files: `SegmentParams.extra_outputs`' choices."""
    return [entry.option for entry in optional_outputs() if entry.option is not None]
