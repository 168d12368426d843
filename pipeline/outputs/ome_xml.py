"""OME-XML for the probability store: what Bio-Formats (and so QuPath 0.6) reads.

Bio-Formats' OMEZarrReader takes channel names, channel colours and the physical pixel size
from `OME/METADATA.ome.xml` (the bioformats2raw layout) and ignores the NGFF `omero` block,
so the store carries both. The XML describes series 0, level 0: sizes and pixel type must
match that array, or the reader's planes and the pixels disagree. No timestamps or random
ids: the same run writes the same bytes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence

OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = f"{OME_NS} {OME_NS}/ome.xsd"
# characters XML 1.0 cannot hold even escaped (names come from model.json and file names)
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    """A name as XML can carry it: characters XML 1.0 forbids become U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(value))


def ome_color(rgb: Sequence[int]) -> int:
    """OME Color: RGBA packed in a signed 32-bit int (alpha 255), as the schema types it."""
    value = (int(rgb[0]) << 24) | (int(rgb[1]) << 16) | (int(rgb[2]) << 8) | 0xFF
    return value - (1 << 32) if value >= 1 << 31 else value


def probability_ome_xml(
    name: str,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    shape_cyx: tuple[int, int, int],
    mpp_xy: tuple[float, float],
) -> str:
    """One Image: uint8, SizeC = classes (named and coloured), SizeY/X of level 0, Z = T = 1,
    physical pixel size in micrometres, `MetadataOnly` (the pixels are the zarr arrays)."""
    c, h, w = (int(v) for v in shape_cyx)
    ET.register_namespace("", OME_NS)
    ET.register_namespace("xsi", XSI_NS)
    root = ET.Element(
        f"{{{OME_NS}}}OME",
        {"Creator": "wsi-segment", f"{{{XSI_NS}}}schemaLocation": SCHEMA_LOCATION},
    )
    image = ET.SubElement(root, f"{{{OME_NS}}}Image", {"ID": "Image:0", "Name": _text(name)})
    pixels = ET.SubElement(
        image,
        f"{{{OME_NS}}}Pixels",
        {
            "ID": "Pixels:0",
            "DimensionOrder": "XYCZT",
            "Type": "uint8",
            "SignificantBits": "8",
            "BigEndian": "false",
            "Interleaved": "false",
            "SizeX": str(w),
            "SizeY": str(h),
            "SizeC": str(c),
            "SizeZ": "1",
            "SizeT": "1",
            "PhysicalSizeX": repr(float(mpp_xy[0])),
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": repr(float(mpp_xy[1])),
            "PhysicalSizeYUnit": "µm",
        },
    )
    for k, (label, color) in enumerate(zip(class_names, colors, strict=True)):
        ET.SubElement(
            pixels,
            f"{{{OME_NS}}}Channel",
            {
                "ID": f"Channel:0:{k}",
                "Name": _text(label),
                "Color": str(ome_color(color)),
                "SamplesPerPixel": "1",
            },
        )
    ET.SubElement(pixels, f"{{{OME_NS}}}MetadataOnly")
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
