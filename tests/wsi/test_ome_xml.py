"""OME-TIFFs as bfconvert, QuPath and tifffile write them (`wsi/ome_xml.py`, and the OME
refusal in `wsi/backends.OpenSlideBackend`): the pyramid in SubIFDs and the pixel size in
the OME-XML alone. openslide read such a file as one plain level without a pixel size, so
`auto` took it, then asked for --mpp or refused the slide as having no pyramid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import SlideError
from wsi_segment.wsi.ome_xml import ome_pixel_size
from wsi_segment.wsi.slide import open_slide

OME = '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">{}</Image></OME>'


@pytest.mark.parametrize(
    ("pixels", "size"),
    [
        ('<Pixels PhysicalSizeX="0.25" PhysicalSizeY="0.5"/>', (0.25, 0.5)),  # µm: OME's default
        (
            '<Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.25" '
            'PhysicalSizeYUnit="µm"/>',
            (0.25, 0.25),
        ),
        (
            '<Pixels PhysicalSizeX="0.00025" PhysicalSizeXUnit="mm" PhysicalSizeY="0.00025" '
            'PhysicalSizeYUnit="mm"/>',
            (0.25, 0.25),
        ),
        ('<Pixels PhysicalSizeX="0.25"/>', None),  # y not given
        ('<Pixels PhysicalSizeX="0.25" PhysicalSizeY="0.25" PhysicalSizeYUnit="pc"/>', None),
        ('<Pixels PhysicalSizeX="nan" PhysicalSizeY="0.25"/>', None),
        ('<Pixels PhysicalSizeX="-1" PhysicalSizeY="0.25"/>', None),
    ],
)
def test_the_pixel_size_of_the_xml(pixels: str, size: tuple[float, float] | None) -> None:
    found = ome_pixel_size(OME.format(pixels))
    assert found == (pytest.approx(size) if size else None)


def test_no_xml_or_broken_xml_gives_no_size() -> None:
    assert ome_pixel_size(None) is None and ome_pixel_size("<OME") is None


def sub_ifd_pyramid(path: Path) -> Path:
    """1024 px of the CMU slide, two SubIFD levels below, the pixel size in the XML only."""
    base = tifffile.imread(CMU_SLIDE)[:1024, :1024]
    levels = [np.asarray(Image.fromarray(base).reduce(f)) for f in (2, 4)]
    size = {"PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(base, subifds=2, tile=(256, 256), photometric="rgb", compression="jpeg",
                   metadata={"axes": "YXS", **size, "PhysicalSizeYUnit": "µm"})  # fmt: skip
        for level in levels:
            tiff.write(level, subfiletype=1, tile=(256, 256), photometric="rgb",
                       compression="jpeg")  # fmt: skip
    return path


def test_a_sub_ifd_pyramid_is_read_whole_with_its_pixel_size(tmp_path: Path) -> None:
    path = sub_ifd_pyramid(tmp_path / "pyramid.ome.tif")
    slide = open_slide(path)
    assert slide.backend == "tiffslide"
    assert slide.level_dimensions == ((1024, 1024), (512, 512), (256, 256))
    assert slide.mpp == (0.5, 0.5)
    with pytest.raises(SlideError, match="openslide: ValueError: an OME-TIFF"):
        open_slide(path, "openslide")
