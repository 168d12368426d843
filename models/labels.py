"""The label ids every output and every score shares: classes 0..K-1 and two reserved values.

A class map (uint8) holds a model class id `k` (0..K-1, model.json order), `UNCLASSIFIED`
where the tile's classifier ruled every class out (tissue the gate left with no class), or
`NODATA` where nothing was analysed (outside the tissue). Defined here, once, and without
torch, so the output writers read them without loading a model.
"""

from __future__ import annotations

NODATA = 255  # outside the tissue: not analysed
UNCLASSIFIED = 254  # tissue of a tile where the classification gate kept no class
UNCLASSIFIED_NAME = "Unclassified"  # its name in summary.json, the GeoJSON and the overlay
UNCLASSIFIED_COLOR = (64, 64, 64)  # dark grey: QuPath's colour for a class given none
TISSUE_NAME = "Tissue"  # the GeoJSON feature of the whole analysed tissue; summary's "Tissue"
# no model class may be named so: each name means one thing in the GeoJSON and in QuPath, and
# a class's cohort.csv columns (`<class>_area_um2`) must not be one of the table's own
RESERVED_NAMES = {
    UNCLASSIFIED_NAME: "tissue the gate leaves without a class",
    TISSUE_NAME: "the outline of all the tissue analysed",
    "tissue": "cohort.csv's tissue_area_um2 column (all the tissue analysed)",
    "region": "cohort.csv's region_area_um2 column (a --roi region's area)",
}
