"""Outputs of a `--roi` run: class polygons cut to the regions, areas per region, and one
QuPath annotation per region carrying those areas as measurements.

Per-region areas intersect the unsimplified class polygons (exact to the label raster) with
each region (already cut to the slide), so they do not depend on the simplification
tolerance, and output pixels over the slide's edge count for their part on it, as in the
slide's own areas; regions may overlap, and then each reports its own areas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from wsi_segment.pipeline.outputs.geojson import make_feature
from wsi_segment.pipeline.outputs.polygons import as_multipolygon
from wsi_segment.pipeline.outputs.summary import ratio
from wsi_segment.wsi.roi import Roi

ROI_CLASS = "ROI"
ROI_COLOR = (255, 200, 0)
REGION_OF_KEY = "wsi_segment_region_of"  # metadata: the QuPath id of the user's region


def clip_to_rois(
    class_geoms: Mapping[int, BaseGeometry], rois: Sequence[Roi]
) -> dict[int, BaseGeometry]:
    """Each class's geometry inside the union of the regions."""
    area = shapely.union_all([r.geometry for r in rois])
    return {c: as_multipolygon(shapely.intersection(g, area)) for c, g in class_geoms.items()}


def roi_class_areas(
    rois: Sequence[Roi],
    class_geoms: Mapping[int, BaseGeometry],
    classes: Sequence[str],
    um2_per_px: float,
) -> list[dict[str, Any]]:
    """Per region: its area on the slide, the tissue in it, and each class's area and share
    of that tissue (um^2; geometries in level-0 px, `um2_per_px` = mpp_x * mpp_y); in a
    region without tissue the shares are undefined, None (`summary.ratio`).

    The tissue of a region is what was labelled in it (the sum of its class areas), as the
    slide's `Tissue` area is: so no class exceeds it, and a region covering the slide
    reports the slide's areas.
    """
    report = []
    for roi in rois:
        cls_um2 = {
            name: float(shapely.intersection(class_geoms[c], roi.geometry).area) * um2_per_px
            if c in class_geoms
            else 0.0
            for c, name in enumerate(classes)
        }
        labelled = math.fsum(cls_um2.values())
        report.append(
            {
                **_known_as(roi),
                "area_um2": float(roi.geometry.area) * um2_per_px,
                "tissue_area_um2": labelled,
                "classes": {
                    name: {
                        "area_um2": a,
                        "fraction_of_tissue": ratio(a, labelled),
                    }
                    for name, a in cls_um2.items()
                },
            }
        )
    return report


def _known_as(roi: Roi) -> dict[str, Any]:
    """What summary.json names a region by: its name, and its QuPath id and class where the
    export gave them."""
    return {
        "name": roi.name,
        **({"qupath_id": roi.qupath_id} if roi.qupath_id else {}),
        **({"classification": roi.classification["name"]} if roi.classification else {}),
    }


def missing_core_report(cores: Sequence[Roi], mpp: tuple[float, float]) -> list[dict[str, Any]]:
    """summary.json's entries of the TMA cores the --roi file marks missing: name, QuPath id
    and class, area on the slide, `"missing": true`; no tissue nor class numbers (nothing
    was segmented there, so none is guessed)."""
    return [
        {
            **_known_as(core),
            "area_um2": float(core.geometry.area) * mpp[0] * mpp[1],
            "missing": True,
        }
        for core in cores
    ]


def roi_features(
    rois: Sequence[Roi], report: Sequence[Mapping[str, Any]], id_prefix: str
) -> list[dict[str, Any]]:
    """One annotation per region, measurements = its class areas and shares (an undefined
    share, None, is left out: `geojson.make_feature`). It keeps what QuPath
    knows the region by: its name, its classification (`ROI` when it had none) and, in the
    metadata (`REGION_OF_KEY`), the id of the user's object, so
    `docs/qupath/wsi_segment_import.groovy` puts the measurements on that object. Its own id
    is new (from `id_prefix`, the run's fingerprint, and its place): a plain import adds it
    beside the user's object instead of giving the image two objects with one id."""
    features = []
    for i, (roi, rep) in enumerate(zip(rois, report, strict=True)):
        measurements: dict[str, float | None] = {
            "area_um2": rep["area_um2"],
            "Tissue area_um2": rep["tissue_area_um2"],
        }
        for name, values in rep["classes"].items():
            measurements[f"{name} area_um2"] = values["area_um2"]
            measurements[f"{name} fraction_of_tissue"] = values["fraction_of_tissue"]
        cls = roi.classification
        feature = make_feature(
            roi.geometry,
            cls["name"] if cls else ROI_CLASS,
            (cls.get("color") or ROI_COLOR) if cls else ROI_COLOR,
            measurements,
            f"{id_prefix}/roi/{i}",
            kind="region",
            metadata={REGION_OF_KEY: roi.qupath_id} if roi.qupath_id else None,
        )
        feature["properties"]["name"] = roi.name
        features.append(feature)
    return features
