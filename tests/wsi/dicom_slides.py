"""DICOM whole-slide images written the way scanners and converters write them, for tests of
slide folders: one series, one `.dcm` file per pyramid level (VL Whole Slide Microscopy
Image Storage, TILED_FULL, JPEG baseline frames), written with pydicom from real pixels.

The attributes are those openslide's DICOM reader (libdicom) needs: SOP class, ImageType
VOLUME, the total pixel matrix and tile size, frames in row-major order, pixel spacing in mm
in the shared functional groups, one series and frame of reference for all levels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _uid(seed: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[seed]))  # the same UID for the same seed


def _frames(rgb: np.ndarray, tile: int) -> list[bytes]:
    """Row-major JPEG tiles (4:2:0, as openslide wants them), padded with white."""
    h, w = rgb.shape[:2]
    frames = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            padded = np.full((tile, tile, 3), 255, np.uint8)
            part = rgb[y : y + tile, x : x + tile]
            padded[: part.shape[0], : part.shape[1]] = part
            buf = io.BytesIO()
            Image.fromarray(padded).save(buf, "JPEG", quality=95)
            frames.append(buf.getvalue())
    return frames


def write_level(
    path: Path, rgb: np.ndarray, level: int, mpp: float, tile: int = 256, photometric: str = ""
) -> None:
    """One pyramid level as one DICOM file (level 0 ORIGINAL, the others DERIVED). The frames
    are JFIF (YCbCr); `photometric` "RGB" labels them RGB all the same, as some converters
    do (default: YBR_FULL_422, what they are)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import JPEGBaseline8Bit

    h, w = rgb.shape[:2]
    spacing_mm = mpp * 2**level / 1000
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_WSI
    meta.MediaStorageSOPInstanceUID = _uid(f"level-{level}")
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = VL_WSI
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid("study"), _uid("series")
    ds.FrameOfReferenceUID = _uid("frame of reference")
    ds.Modality, ds.Manufacturer = "SM", "wsi-segment tests"
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "Test", "1", "20260101", "000000"
    ds.SeriesNumber, ds.InstanceNumber = 1, level + 1
    derived = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0 else derived
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, photometric or "YBR_FULL_422"
    ds.PlanarConfiguration, ds.PixelRepresentation = 0, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.Rows = ds.Columns = tile
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = h, w
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * spacing_mm, h * spacing_mm
    ds.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.VolumetricProperties, ds.LossyImageCompression = "VOLUME", "01"
    ds.SpecimenLabelInImage = ds.BurnedInAnnotation = ds.ExtendedDepthOfField = "NO"
    ds.FocusMethod = "AUTO"
    frames = _frames(rgb, tile)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def write_dicom_slide(
    folder: Path, rgb: np.ndarray, mpp: float, photometric: str = ""
) -> list[Path]:
    """A two-level DICOM slide of `rgb` (level 1 at half size) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    half = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2)))
    paths = [folder / "level-0.dcm", folder / "level-1.dcm"]
    write_level(paths[0], rgb, 0, mpp, photometric=photometric)
    write_level(paths[1], half, 1, mpp, photometric=photometric)
    return paths


def write_cmu_crop(folder: Path) -> np.ndarray:
    """A 700 x 500 px crop of the real CMU slide, written as a DICOM slide folder at
    `folder` (0.499 um/px); returns the crop's RGB pixels."""
    from tests.conftest import CMU_SLIDE
    from wsi_segment.wsi.slide import open_slide

    with open_slide(CMU_SLIDE) as slide:
        rgb = slide.read_region((800, 1100), 0, (700, 500))
    write_dicom_slide(folder, rgb, 0.499)
    return rgb
