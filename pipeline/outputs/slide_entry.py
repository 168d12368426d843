"""What the morning report knows of one slide: `SlideEntry` (its status and the numbers of
its summary), its classes' areas (`ClassArea`) and its `--roi` regions (`Region`), with the
QC flags a reader should look at. Read from an output folder by `slide_entries`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wsi_segment.models.labels import UNCLASSIFIED_NAME
from wsi_segment.pipeline.outputs.slide_status import DONE, EMPTY_TISSUE, UP_TO_DATE

GATED_FLAG = 0.05  # a gated (Unclassified) share of tissue at or above this is flagged
LOW_TISSUE = 0.10  # a region less than this share tissue is flagged (a missing TMA core)


@dataclass(frozen=True)
class ClassArea:
    """One class's area (um^2) and share of the labelled tissue (None: undefined, there is
    no tissue)."""

    name: str
    area_um2: float
    fraction: float | None


@dataclass(frozen=True)
class Region:
    """One `--roi` region's numbers, as summary.json's `rois` has them; a TMA core QuPath
    marks missing has no tissue figure (None: nothing was segmented there)."""

    name: str
    qupath_id: str
    area_um2: float
    tissue_area_um2: float | None
    classes: tuple[ClassArea, ...]
    qupath_class: str = ""  # the region's classification in QuPath ("" where it had none)

    @property
    def qc_flags(self) -> tuple[str, ...]:
        """ "missing core" for a core QuPath marks missing; "low tissue" where less than
        `LOW_TISSUE` of the region is tissue: a core that fell off the glass, or a region
        drawn mostly on background, whose class shares are of a few cells."""
        if self.tissue_area_um2 is None:
            return ("missing core",)
        share = self.tissue_area_um2 / self.area_um2 if self.area_um2 > 0 else 0.0
        if share < LOW_TISSUE:
            return (f"low tissue {100 * share:.1f} %",)
        return ()


@dataclass(frozen=True)
class SlideEntry:
    """A slide of the output folder: its status and the numbers of its summary (none when
    it has no usable one). `name` is the output folder's name; `has_thumbnail`: the run
    wrote the overlay's thumbnail (its summary lists it, and it is there)."""

    name: str
    status: str
    reason: str = ""
    slide_path: str = ""
    model: str = ""
    model_sha256: str = ""
    mpp: tuple[float, float] | None = None
    tissue_area_um2: float | None = None
    tissue_status: str = ""
    classes: tuple[ClassArea, ...] = ()
    regions: tuple[Region, ...] = ()
    colors: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    titles: Mapping[str, str] = field(default_factory=dict)  # model.json's class_titles
    created_utc: str = ""
    settings: str = ""  # the output-changing parameters of its run (`run_settings`)
    failed_utc: str = ""  # when its failure record says it last failed (none: no record)
    schema_version: int | None = None
    has_overlay: bool = False
    has_thumbnail: bool = False

    @property
    def empty(self) -> bool:
        """Finished with nothing to show: no tissue found, or a dark (fluorescence?) slide."""
        return self.status in (DONE, UP_TO_DATE) and self.tissue_status in EMPTY_TISSUE

    @property
    def qc_flags(self) -> tuple[str, ...]:
        """What a reader should look at: no tissue, a dark (fluorescence?) slide, and a
        large share of tissue the gate left without a class."""
        flags = []
        if self.tissue_status == "none":
            flags.append("no tissue")
        elif self.tissue_status == "fluorescence?":
            flags.append("fluorescence?")
        gated = next((c.fraction for c in self.classes if c.name == UNCLASSIFIED_NAME), None)
        if gated is not None and gated >= GATED_FLAG:
            flags.append(f"gated {100 * gated:.1f} %")
        return tuple(flags)
