"""Stage 3 of a slide run: from chunk outcomes to GeoJSON, overlay, summary and pyramid.

Areas come from pixel counts of the label raster (exact), and the polygons are exact to the
same raster before simplification, so summary areas, polygon areas and the zarr map agree.
The chunks arrive with their polygons already simplified (in the writer, during inference):
this stage only unions them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from wsi_segment.models.labels import UNCLASSIFIED_NAME
from wsi_segment.pipeline.output_files import (
    GEOJSON_NAME,
    OVERLAY_NAME,
    STORE_NAME,
    SUMMARY_NAME,
    THUMBNAIL_NAME,
    always_written,
    optional_outputs,
)
from wsi_segment.pipeline.outputs.chunk_summary import (
    ChunkOutcome,
    output_extent,
    slide_area_px,
)
from wsi_segment.pipeline.outputs.geojson import build_feature_collection, write_geojson
from wsi_segment.pipeline.outputs.label_image import finalize_label_pyramid
from wsi_segment.pipeline.outputs.ome_zarr import Color, finalize_pyramid
from wsi_segment.pipeline.outputs.output_classes import output_classes, output_ids
from wsi_segment.pipeline.outputs.overlay import (
    label_thumbnail,
    render_overlay,
    sample_labels,
    save_overlay,
)
from wsi_segment.pipeline.outputs.overlay_thumbnail import save_thumbnail
from wsi_segment.pipeline.outputs.ownership import store_chunk_files
from wsi_segment.pipeline.outputs.polygon_merge import (
    drop_collinear_vertices,
    merge_class_polygons,
    merge_simplified_polygons,
    simplify_coverage,
)
from wsi_segment.pipeline.outputs.polygons import (
    clip_to_extent,
    slide_extent_level0,
    to_level0,
)
from wsi_segment.pipeline.outputs.prepared_run import PreparedRun
from wsi_segment.pipeline.outputs.roi_outputs import (
    clip_to_rois,
    missing_core_report,
    roi_class_areas,
    roi_features,
)
from wsi_segment.pipeline.outputs.summary import (
    SCHEMA_VERSION,
    class_measurements,
    class_summary,
    command_line,
    ratio,
    software_versions,
    write_summary,
)
from wsi_segment.pipeline.threads import Background
from wsi_segment.wsi.shown_path import shown_slide_path
from wsi_segment.wsi.slide import Slide
from wsi_segment.wsi.slide_path import absolute_slide_path
from wsi_segment.wsi.tissue import tissue_warning

THUMB_SIZE = 1024


def write_outputs(
    prep: PreparedRun, outcomes: list[ChunkOutcome], work_dir: Path
) -> dict[str, Any]:
    """Write every file except the zarr level 0 (already streamed); return the summary.

    The polygons (GEOS unions and simplification, which release the GIL) and the GeoJSON run
    in a second thread while this one builds the pyramid and the overlay: on a 20k px slide
    that takes ~1.5 s off the fixed cost of a run.
    """
    t0 = time.perf_counter()
    # the model's classes, then Unclassified (index k): tissue the gate left with no class
    classes, colors = output_classes(prep.meta.classes, prep.meta.colors)
    areas, measurements, tissue_um2 = _class_areas(prep, outcomes, classes)
    zarr_path = work_dir / STORE_NAME
    files = always_written()
    # The `with` waits for the polygon thread even when this thread fails, so nothing writes
    # into the work folder after the caller has removed it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="polygons") as pool:
        polygons = pool.submit(
            _write_polygons, prep, outcomes, classes, colors, measurements, work_dir
        )
        # zarr writes from its own thread: an interrupt waits for the pyramids to be written
        n_levels = Background(_write_pyramids, zarr_path).result_through_interrupts()
        files += _write_optional_outputs(prep, zarr_path, work_dir)
        _write_overlay(prep, zarr_path, work_dir, classes, colors)
        roi_report = polygons.result()
    prep.timings["outputs_s"] = time.perf_counter() - t0
    run = {**run_stats(outcomes), **prep.read_device}
    summary = _summary(prep, areas, tissue_um2, n_levels, files, run)
    # what the ownership check counts before an --overwrite replaces this folder
    summary["output"]["store_chunk_files"] = store_chunk_files(zarr_path)
    if roi_report:
        summary["rois"] = roi_report + missing_core_report(prep.missing_cores, prep.mpp)
    write_summary(work_dir / SUMMARY_NAME, summary)
    return summary


def _write_pyramids(zarr_path: Path) -> int:
    """The probability and label pyramids above level 0; the number of levels."""
    n_levels = finalize_pyramid(zarr_path)
    finalize_label_pyramid(zarr_path, n_levels)
    return n_levels


def _class_areas(
    prep: PreparedRun, outcomes: list[ChunkOutcome], classes: list[str]
) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, float]], float]:
    """Per-class areas for summary.json, measurements for the GeoJSON, and the tissue area
    (um^2), all from the chunks' integer totals: fractions are taken once, so the bytes are
    the same whatever the chunking."""
    k = len(prep.meta.classes)
    counts = np.zeros(k + 1, np.int64)
    prob_sums_u8 = np.zeros(k + 1, np.int64)
    for outcome in outcomes:
        counts += outcome.counts
        prob_sums_u8 += outcome.prob_sums
    prob_sums = prob_sums_u8 / 255.0  # of probabilities 0-1
    extent = output_extent(prep.slide.dimensions, prep.level0_per_output)
    area_px = slide_area_px(outcomes, extent) if outcomes else counts.astype(np.float64)
    px_area = prep.output_mpp[0] * prep.output_mpp[1]
    labelled = float(area_px.sum())
    # undefined shares and means are null (`summary.ratio`), Unclassified's probability too
    areas = class_summary(classes, counts, prob_sums, area_px, px_area)
    measurements = class_measurements(classes, counts, prob_sums, prep.output_mpp, area_px)
    # Unclassified has no probability: no measurement in the GeoJSON
    measurements[UNCLASSIFIED_NAME].pop("mean_probability", None)
    measurements["Tissue"] = {"area_um2": float(labelled * px_area)}
    return areas, measurements, labelled * px_area


def _write_optional_outputs(prep: PreparedRun, zarr_path: Path, work_dir: Path) -> list[str]:
    """The registry's writers, for the files asked for; returns the names written."""
    written = []
    for output in optional_outputs():
        if output.option in prep.params.extra_outputs and output.writer is not None:
            path = work_dir / output.name
            output.writer(zarr_path, path, prep.grid, prep.fingerprint, prep.slide.dimensions)
            written.append(output.name)
    return written


def run_stats(outcomes: list[ChunkOutcome]) -> dict[str, float | int | None]:
    """What crossed from the model's device: per tile, each core's uint8 probabilities and
    labels and the classifier's probabilities (models/reduction.py), never full maps (per
    tile: None when no tile ran)."""
    tiles = sum(o.tiles_run for o in outcomes)
    total = sum(o.bytes_from_model for o in outcomes)
    return {
        "tiles_run": tiles,
        "bytes_from_model": total,
        "bytes_from_model_per_tile": ratio(total, tiles),
    }


def _write_polygons(
    prep: PreparedRun,
    outcomes: list[ChunkOutcome],
    classes: list[str],
    colors: list[Color],
    measurements: dict[str, dict[str, float]],
    work_dir: Path,
) -> list[dict[str, Any]]:
    """Chunk polygons (simplified per chunk) -> merged, level-0, clipped -> tissue.geojson;
    returns the per-region class areas of a `--roi` run (empty without regions)."""
    simplified = _merge_outcomes(outcomes, prep.params.simplify_tolerance)
    offset = (-float(prep.slide.bounds_offset[0]), -float(prep.slide.bounds_offset[1]))
    scale = prep.level0_per_output
    # The last output row/column covers up to one output pixel past the slide edge: clip to
    # the slide so coordinates stay inside the image QuPath shows (a box cut keeps coverage).
    extent = slide_extent_level0(prep.slide.dimensions, offset)
    geoms_level0 = {
        c: clip_to_extent(to_level0(g, scale, offset), extent) for c, g in simplified.items()
    }
    tissue_level0 = clip_to_extent(
        shapely.affinity.translate(prep.tissue.polygons, offset[0], offset[1]), extent
    )
    rois = [
        dataclasses.replace(r, geometry=shapely.affinity.translate(r.geometry, *offset))
        for r in prep.rois
    ]
    report: list[dict[str, Any]] = []
    if rois:  # areas from the unsimplified polygons (exact to the label raster)
        merged = merge_class_polygons([_pieces(o.exact_polygons for o in outcomes)])
        exact = {c: to_level0(g, scale, offset) for c, g in merged.items()}
        um2 = prep.mpp[0] * prep.mpp[1]
        report = roi_class_areas(rois, exact, classes, um2)
        geoms_level0 = clip_to_rois(geoms_level0, rois)
    fc = build_feature_collection(
        geoms_level0, classes, colors, measurements, tissue_level0, id_prefix=prep.fingerprint
    )
    fc["features"].extend(roi_features(rois, report, prep.fingerprint))
    write_geojson(work_dir / GEOJSON_NAME, fc)
    return report


def _merge_outcomes(outcomes: list[ChunkOutcome], tolerance: float) -> dict[int, MultiPolygon]:
    """The slide's class polygons from the chunks' pieces: those simplified per chunk are
    only unioned; exact ones (tolerance 0) are unioned, then lose their collinear vertices."""
    pieces = [_pieces(o.polygons for o in outcomes)]
    if tolerance > 0:
        return drop_collinear_vertices(merge_simplified_polygons(pieces))
    return simplify_coverage(merge_class_polygons(pieces), tolerance=0)


def _pieces(per_chunk: Iterable[Mapping[int, list[bytes]]]) -> dict[int, list[Polygon]]:
    """Each class's pieces over all chunks, classes and pieces in one order (by WKB) whatever
    order the chunks came in: GEOS unions give the same bytes only for the same input order."""
    gathered: dict[int, list[bytes]] = {}
    for chunk in per_chunk:
        for c, wkbs in chunk.items():
            gathered.setdefault(int(c), []).extend(wkbs)
    return {c: list(shapely.from_wkb(sorted(gathered[c]))) for c in sorted(gathered)}


def _write_overlay(
    prep: PreparedRun, zarr_path: Path, work_dir: Path, classes: list[str], colors: list[Color]
) -> None:
    """overlay.png: thumbnail with class colours from the stored label image (the raster the
    GeoJSON and the areas come from), its level nearest the thumbnail, sampled under each
    pixel; and its small picture for the report, made from the overlay in memory.
    `Unclassified` (the last of `classes`) is in the legend only where the picture shows it."""
    early = prep.overlay_thumb  # read during model load (segment.py)
    thumb = early.result() if early is not None else overlay_thumbnail(prep.slide, THUMB_SIZE)
    labels, factor = label_thumbnail(zarr_path, max_size=2 * THUMB_SIZE)
    dims = (int(prep.slide.dimensions[0]), int(prep.slide.dimensions[1]))
    shown = sample_labels(labels, factor, prep.level0_per_output, dims, thumb.shape[:2])
    k = len(classes) - 1
    shown = output_ids(shown, k)
    if not (shown == k).any():
        classes, colors = classes[:k], colors[:k]
    overlay = render_overlay(thumb, shown, classes, colors)
    save_overlay(overlay, work_dir / OVERLAY_NAME)
    save_thumbnail(overlay, work_dir / THUMBNAIL_NAME)


def overlay_thumbnail(slide: Slide, max_size: int) -> np.ndarray:
    """RGB thumbnail, longer side <= max_size: `Slide.thumbnail`, the pixels tissue detection
    sees, so the overlay shows the slide as the pipeline judged it."""
    return slide.thumbnail(max_size)[0]


def _summary(
    prep: PreparedRun,
    areas: dict[str, Any],
    tissue_um2: float,
    n_levels: int,
    files: list[str],
    run: dict[str, Any],
) -> dict[str, Any]:
    """summary.json: what ran on what, with which model and parameters, and what came out."""
    origin = prep.params.origin
    return {
        "schema_version": SCHEMA_VERSION,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line(origin.command if origin else None),
        "run": dict(origin.details) if origin else None,
        "slide": _slide_section(prep),
        "model": _model_section(prep),
        "parameters": prep.params.as_dict(),
        "fingerprint": prep.fingerprint,
        "output": {
            "mpp": {"x": prep.output_mpp[0], "y": prep.output_mpp[1]},
            "shape_yx": list(prep.output_shape),
            "level0_per_output_pixel": prep.level0_per_output,
            "pyramid_levels": n_levels,
            "files": files,
        },
        "tiling": _tiling_section(prep),
        "tissue": _tissue_section(prep, tissue_um2),
        "classes": areas,
        "precision": dict(prep.precision),
        # every machine-dependent decision and its reason (a Dask run's: each band's)
        "run_policy": dict(prep.run_policy),
        "timings_s": dict(prep.timings),
        # Run statistics like the timings (local runs only; thread interleaving moves them).
        "read_stats": dict(prep.read_stats),
        "engine": dict(prep.engine),
        "run_stats": run,
        "versions": software_versions(),
    }


def _slide_section(prep: PreparedRun) -> dict[str, Any]:
    """The slide as read: backend, size, mpp (and any override), and the offset QuPath shows
    its GeoJSON at."""
    slide = prep.slide
    return {
        "path": shown_slide_path(absolute_slide_path(prep.slide_path)),
        "name": prep.name,
        "backend": slide.backend,
        "vendor": slide.vendor,
        "dimensions": list(slide.dimensions),
        "mpp": {"x": prep.mpp[0], "y": prep.mpp[1]},
        "mpp_override": prep.params.mpp,
        "qupath_offset_level0": {
            "x": -float(slide.bounds_offset[0]),
            "y": -float(slide.bounds_offset[1]),
        },
        **_read_section(prep),
    }


def _read_section(prep: PreparedRun) -> dict[str, Any]:
    """The level the chunks were read from (the level that serves, `--read-level`), its mpp,
    and the resample from it: level pixels per model pixel (below 1: a slight upsample)."""
    ds = float(prep.slide.level_downsamples[prep.read_level])
    return {
        "read_level": prep.read_level,
        "read_level_mpp": {"x": prep.mpp[0] * ds, "y": prep.mpp[1] * ds},
        "read_scale": prep.level0_per_model / ds,
    }


def _model_section(prep: PreparedRun) -> dict[str, Any]:
    """The model that ran, named by its folder and identified by its hash."""
    return {
        "name": prep.meta.name,
        "dir": str(prep.model_dir),
        "sha256": prep.model_hash,
        "classes": list(prep.meta.classes),
        "mpp": float(prep.meta.mpp),
        "tile_size": int(prep.meta.tile_size),
        "gate_epsilon": float(prep.meta.gate_epsilon),
        **({"class_titles": dict(prep.meta.class_titles)} if prep.meta.class_titles else {}),
    }


def _tiling_section(prep: PreparedRun) -> dict[str, Any]:
    """The tile grid and how much of its work overlapping tiles repeat."""
    grid = prep.grid
    return {
        "tile": grid.tile,
        "overlap": grid.overlap,
        "stride": grid.stride,
        "chunks": len(prep.specs),
        "tiles": prep.tiles_total,
        "redundant_fraction": 1.0 - (grid.stride / grid.tile) ** 2,
    }


def _tissue_section(prep: PreparedRun, tissue_um2: float) -> dict[str, Any]:
    """What tissue detection found (and its warning), and the tissue area labelled."""
    return {
        "status": prep.tissue.status,
        "warning": tissue_warning(prep.tissue.status),
        "mode": prep.params.tissue,
        "roi": str(prep.params.roi) if prep.params.roi else None,
        "area_um2": tissue_um2,
        "detected_fraction_of_slide": float(prep.tissue.fraction),
        "note": "no tissue found" if prep.tiles_total == 0 else "",
    }
