"""The pixel size an OME-TIFF records in its OME-XML (`Pixels` `PhysicalSizeX/Y` and their
units), which tiffslide does not read: it reads the TIFF resolution tags only, and files
written by bfconvert, QuPath or tifffile often carry the size in the XML alone."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree

# micrometres per unit of OME's UnitsLength (µm when the attribute is absent, as OME says)
MICROMETRES_PER_UNIT = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_pixel_size(xml: str | None) -> tuple[float, float] | None:
    """(x, y) µm per pixel of the first image's `Pixels`, or None when the XML does not give
    both as positive numbers in a known unit (or is not XML)."""
    if not xml:
        return None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = [_micrometres(pixels, axis) for axis in ("X", "Y")]
    return (sizes[0], sizes[1]) if sizes[0] and sizes[1] else None


def _micrometres(pixels: ElementTree.Element, axis: str) -> float | None:
    try:
        value = float(pixels.get(f"PhysicalSize{axis}", ""))
    except ValueError:
        return None
    per_unit = MICROMETRES_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
    if per_unit is None or not math.isfinite(value) or value <= 0:
        return None
    return value * per_unit
