"""What a JPEG stream's header says about its colour coding, read without decoding it.

A decoder that is told nothing out of band guesses whether a 3-component stream holds
YCbCr (to be converted to RGB) or RGB samples (no transform) from the header alone. The
guess below is libjpeg's (`default_decompress_parms` in libjpeg-turbo): a JFIF marker says
YCbCr; else an Adobe APP14 marker's transform flag (0: RGB, 1: YCbCr); else component ids
1, 2, 3 say YCbCr and 'R', 'G', 'B' say RGB; anything else is assumed YCbCr. A TIFF reader
overrides the guess with the TIFF's photometric tag (Aperio SVS writes RGB samples with ids
0, 1, 2 and no marker, so the guess would be wrong); `wsi.raw_tiles` makes such streams say
RGB in their header, with the APP14 marker libjpeg writes for RGB (`ADOBE_RGB`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from wsi_segment.errors import JpegHeaderError

Colour = Literal["rgb", "ycbcr"]

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# The Adobe APP14 segment libjpeg emits for an RGB (untransformed) 3-component stream:
# "Adobe", version 100, flags 0 and 0, transform 0.
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_SOF_BASELINE = (0xC0, 0xC1)  # baseline and extended sequential Huffman: 8-bit DCT
_SOF_ANY = {0xC0 + k for k in range(16)} - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not SOFs
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length


@dataclass(frozen=True)
class JpegHeader:
    """The facts of a stream's header (tables + frame) a decoder's colour handling needs."""

    sof: int  # the frame marker's second byte: 0xC0 baseline, 0xC1 extended, 0xC2 progressive
    precision: int  # bits per sample
    size: tuple[int, int]  # (width, height) in pixels
    component_ids: tuple[int, ...]
    sampling: tuple[tuple[int, int], ...]  # (h, v) sampling factors per component
    jfif: bool  # an APP0 "JFIF" segment
    adobe_transform: int | None  # the APP14 "Adobe" transform flag, None without one

    @property
    def baseline_8bit(self) -> bool:
        """Sequential Huffman DCT at 8 bits: what every JPEG decoder, nvJPEG included, reads."""
        return self.sof in _SOF_BASELINE and self.precision == 8

    @property
    def guessed_colour(self) -> Colour:
        """How libjpeg reads a 3-component stream when told nothing else (module doc)."""
        if self.jfif:
            return "ycbcr"
        if self.adobe_transform is not None:
            return "rgb" if self.adobe_transform == 0 else "ycbcr"
        if self.component_ids == (82, 71, 66):  # 'R', 'G', 'B'
            return "rgb"
        return "ycbcr"

    @property
    def says_ycbcr(self) -> bool:
        """The header states YCbCr outright (JFIF, APP14 transform 1, ids 1, 2, 3), rather
        than leaving a decoder to assume it."""
        return (
            self.jfif
            or self.adobe_transform == 1
            or (self.adobe_transform is None and self.component_ids == (1, 2, 3))
        )

    @property
    def subsampling(self) -> tuple[int, int]:
        """(horizontal, vertical) luma samples per chroma sample: (1, 1) is 4:4:4, (2, 2)
        4:2:0; for RGB streams, the first component's over the others'."""
        (h0, v0), rest = self.sampling[0], self.sampling[1:]
        h1 = max((h for h, _ in rest), default=h0)
        v1 = max((v for _, v in rest), default=v0)
        return (h0 // h1 if h1 and h0 % h1 == 0 else 0, v0 // v1 if v1 and v0 % v1 == 0 else 0)


def read_header(stream: bytes) -> JpegHeader:
    """Parse markers from SOI up to the first SOS (tables, APPn, the frame header)."""
    if not stream.startswith(SOI):
        raise JpegHeaderError("does not start with a JPEG SOI marker")
    pos, jfif, adobe = 2, False, None
    frame: tuple[int, int, int, int, tuple[int, ...], tuple[tuple[int, int], ...]] | None = None
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            raise JpegHeaderError(f"no marker at byte {pos}")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            break
        (length,) = struct.unpack(">H", stream[pos + 2 : pos + 4])
        body = stream[pos + 4 : pos + 2 + length]
        if len(body) != length - 2:
            raise JpegHeaderError(f"segment at byte {pos} runs past the end")
        if marker == 0xDA:
            if frame is None:
                raise JpegHeaderError("a scan before any frame header")
            sof, precision, height, width, ids, sampling = frame
            return JpegHeader(sof, precision, (width, height), ids, sampling, jfif, adobe)
        if marker == 0xE0 and body.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
        elif marker in _SOF_ANY:
            frame = _frame(marker, body)
        pos += 2 + length
    raise JpegHeaderError("ends before its first scan (SOS)")


def _frame(
    marker: int, body: bytes
) -> tuple[int, int, int, int, tuple[int, ...], tuple[tuple[int, int], ...]]:
    if len(body) < 6:
        raise JpegHeaderError("frame header too short")
    precision, height, width, count = body[0], *struct.unpack(">HH", body[1:5]), body[5]
    comps = body[6 : 6 + 3 * count]
    if len(comps) != 3 * count:
        raise JpegHeaderError("frame header too short for its components")
    ids = tuple(comps[0::3])
    sampling = tuple((b >> 4, b & 15) for b in comps[1::3])
    return marker, precision, height, width, ids, sampling


def splice_tables(tables: bytes | None, abbreviated: bytes, prefix: bytes = b"") -> bytes:
    """A complete stream from a TIFF's JPEGTables (SOI, DQT/DHT, EOI) and an abbreviated
    tile stream (SOI, frame, scan, EOI): SOI, `prefix` segments, the tables, the tile's own
    segments. The tile's own tables, if any, come later and win, as in libtiff."""
    if not abbreviated.startswith(SOI):
        raise JpegHeaderError("tile does not start with a JPEG SOI marker")
    body = b""
    if tables:
        if not (tables.startswith(SOI) and tables.endswith(EOI)):
            raise JpegHeaderError("JPEGTables is not SOI ... EOI")
        body = tables[2:-2]
    return SOI + prefix + body + abbreviated[2:]
