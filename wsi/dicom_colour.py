"""DICOM slides whose JPEG frames are YCbCr while the header says RGB: found and read right.

Some converters write JFIF frames (YCbCr, 4:2:0) under PhotometricInterpretation RGB.
openslide believes the header and hands out the frames' Y, Cb, Cr samples as R, G, B: white
reads about (255, 128, 128), tissue is found everywhere and the overlay is orange. A JPEG
decoder left to itself (libjpeg's rule, jdapimin.c) takes a 3-component frame for YCbCr when
it has a JFIF marker, or an Adobe marker with transform 1, or no such marker and component
ids 1, 2, 3 (RGB: an Adobe transform 0, or ids 'R', 'G', 'B'). `frames_are_ycbcr` applies
that rule to the first frame of the file openslide opened; where it holds, the openslide
backend converts what openslide returns with libjpeg's own YCbCr -> RGB arithmetic
(`ycbcr_to_rgb`, jdcolor.c: 16-bit fixed point, rounded), so the pixels are those a decoder
that trusted the frames would give.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: Transfer syntaxes whose frames are JPEG baseline / extended (openslide reads these).
JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
#: Explicit VR little endian (7FE0,0010) OB of undefined length: encapsulated pixel data.
_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_ITEM = b"\xfe\xff\x00\xe0"
_HEAD_BYTES = (1 << 20, 64 << 20)  # the header and first frame: usually within the first


def needs_ycbcr_conversion(path: str, properties: Mapping[str, str]) -> bool:
    """Whether openslide's pixels of this DICOM file are YCbCr samples shown as RGB: the
    header says RGB, the frames are JPEG, and libjpeg's rule calls the first one YCbCr."""
    if properties.get("openslide.vendor") != "dicom":
        return False
    if properties.get("dicom.PhotometricInterpretation") != "RGB":
        return False
    if properties.get("dicom.TransferSyntaxUID") not in JPEG_SYNTAXES:
        return False
    frame = first_frame(Path(path))
    return frame is not None and frames_are_ycbcr(frame)


def first_frame(path: Path) -> bytes | None:
    """The first JPEG frame of an encapsulated DICOM file (after the basic offset table);
    None when the pixel data is not found as expected."""
    for size in _HEAD_BYTES:
        with path.open("rb") as f:
            head = f.read(size)
        frame = _first_frame_in(head)
        if frame is not None or len(head) < size:
            return frame
    return None


def _first_frame_in(head: bytes) -> bytes | None:
    """The first frame within the file's first bytes `head`, if all of it is there."""
    at = head.find(_PIXEL_DATA)
    if at < 0:
        return None
    pos = at + len(_PIXEL_DATA)
    for index in range(2):  # item 0: the offset table; item 1: the first fragment
        if head[pos : pos + 4] != _ITEM or len(head) < pos + 8:
            return None
        length = int.from_bytes(head[pos + 4 : pos + 8], "little")
        if index == 1:
            end = pos + 8 + length
            return head[pos + 8 : end] if end <= len(head) else None
        pos += 8 + length
    return None


def frames_are_ycbcr(frame: bytes) -> bool:
    """libjpeg's rule for the colour space of a 3-component JPEG (see the module's doc)."""
    jfif, adobe, ids = False, None, None
    pos = 2 if frame[:2] == b"\xff\xd8" else len(frame)
    while pos + 4 <= len(frame) and frame[pos] == 0xFF:
        marker = frame[pos + 1]
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        payload = frame[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and payload.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and payload.startswith(b"Adobe") and len(payload) >= 12:
            adobe = payload[11]
        elif marker in (0xC0, 0xC1, 0xC2) and len(payload) >= 6 + 3 * 3:
            ids = tuple(payload[6 + 3 * i] for i in range(payload[5]))
        elif marker == 0xDA:  # start of scan: every header marker has been seen
            break
        pos += 2 + length
    if ids is None or len(ids) != 3:
        return False
    if jfif:
        return True
    if adobe is not None:
        return adobe != 0
    return ids != (82, 71, 66)


_SCALE = 16
_HALF = 1 << (_SCALE - 1)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALE) + 0.5)


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = np.arange(256, dtype=np.int64) - 128
    cr_r = (_fix(1.40200) * x + _HALF) >> _SCALE
    cb_b = (_fix(1.77200) * x + _HALF) >> _SCALE
    cr_g = -_fix(0.71414) * x
    cb_g = -_fix(0.34414) * x + _HALF
    return cr_r, cb_b, cr_g, cb_g


_CR_R, _CB_B, _CR_G, _CB_G = _tables()


def ycbcr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., 3 or 4) YCbCr samples (alpha kept) as RGB, by libjpeg's integer tables."""
    y = pixels[..., 0].astype(np.int64)
    cb, cr = pixels[..., 1], pixels[..., 2]
    out = pixels.copy()
    out[..., 0] = np.clip(y + _CR_R[cr], 0, 255)
    out[..., 1] = np.clip(y + ((_CB_G[cb] + _CR_G[cr]) >> _SCALE), 0, 255)
    out[..., 2] = np.clip(y + _CB_B[cb], 0, 255)
    return out
