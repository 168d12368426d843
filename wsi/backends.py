"""The slide readers behind `Slide` (openslide and tiffslide), with one shape, and their registry.

Each backend turns the library's own property names and pixel conventions into the
few facts `Slide` needs, and returns RGBA pixels plus a mask of in-slide pixels so
`Slide` can paint everything else white in one place. `BACKENDS` names them once: the
`--backend` choices, the parameters' check and `open_slide`'s order all read it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from wsi_segment.wsi.dicom_colour import needs_ycbcr_conversion, ycbcr_to_rgb
from wsi_segment.wsi.http_file import http_slide_file
from wsi_segment.wsi.ome_xml import ome_pixel_size
from wsi_segment.wsi.samples import to_uint8
from wsi_segment.wsi.slide_path import is_http_url, url_storage_options


@dataclass(frozen=True)
class SlideMeta:
    """What a backend learnt at open time; plain data, so `Slide` pickles cheaply."""

    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    objective_power: float | None
    associated_images: tuple[str, ...]
    bounds_offset: tuple[int, int]
    tile_sizes: tuple[tuple[int, int] | None, ...]
    properties: dict[str, Any] = field(default_factory=dict)
    sample_dtype: str | None = None  # numpy's name of its pixel samples; None: not said (8-bit)


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _mpp(x: Any, y: Any) -> tuple[float, float] | None:
    mx, my = _num(x), _num(y)
    mx, my = mx or my, my or mx
    if mx is None or my is None or not (mx > 0 and my > 0):
        return None
    return (mx, my)  # as recorded: `Slide.mpp` takes it only where a microscope could


def _tile(props: dict[str, Any], prefix: str, level: int) -> tuple[int, int] | None:
    w = _num(props.get(f"{prefix}.level[{level}].tile-width"))
    h = _num(props.get(f"{prefix}.level[{level}].tile-height"))
    return (int(w), int(h)) if w and h else None


class OpenSlideBackend:
    """openslide: every vendor format it knows (SVS, NDPI, MRXS, SCN, BIF, DICOM, ...)."""

    name: ClassVar[str] = "openslide"
    reads_urls: ClassVar[bool] = False

    def __init__(self, path: str) -> None:
        import openslide

        self.path = path
        self.handle = openslide.OpenSlide(path)
        # YCbCr frames under a header saying RGB: converted on every read (`wsi.dicom_colour`)
        self.ycbcr = needs_ycbcr_conversion(path, self.handle.properties)
        self.sample_dtype: str | None = None
        if self.handle.properties.get("openslide.vendor") == "generic-tiff":
            self._plain_tiff()

    def _plain_tiff(self) -> None:
        """What openslide does not say of a plain TIFF: its sample type (float or 32-bit
        samples it opens, then fails to read) and whether it is an OME-TIFF, which it would
        read as one level, without the pyramid (SubIFDs, as bfconvert and QuPath write it)
        or the pixel size in its XML: refused, so `auto` goes on to tiffslide."""
        import tifffile

        try:
            with tifffile_quiet(), tifffile.TiffFile(self.path) as tiff:
                self.sample_dtype, ome = str(tiff.pages.first.dtype), tiff.is_ome
        except Exception:  # tifffile does not read it: openslide's own reads will tell
            return
        if ome:
            self.handle.close()
            raise ValueError(
                "an OME-TIFF, which it reads as one plain image (no pyramid levels, no pixel "
                "size): read it with tiffslide (--backend auto or tiffslide)"
            )

    def meta(self) -> SlideMeta:
        h = self.handle
        p = dict(h.properties)
        n = h.level_count
        return SlideMeta(
            vendor=p.get("openslide.vendor"),
            level_dimensions=tuple((int(d[0]), int(d[1])) for d in h.level_dimensions),
            level_downsamples=tuple(float(d) for d in h.level_downsamples),
            mpp=_mpp(p.get("openslide.mpp-x"), p.get("openslide.mpp-y")),
            objective_power=_num(p.get("openslide.objective-power")),
            associated_images=tuple(sorted(h.associated_images)),
            bounds_offset=(
                int(_num(p.get("openslide.bounds-x")) or 0),
                int(_num(p.get("openslide.bounds-y")) or 0),
            ),
            tile_sizes=tuple(_tile(p, "openslide", i) for i in range(n)),
            properties=p,
            sample_dtype=self.sample_dtype,
        )

    def read(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """RGBA (alpha 0 outside the slide / transparent), no separate mask needed."""
        pixels = np.asarray(self.handle.read_region(location, level, size))
        return (ycbcr_to_rgb(pixels) if self.ycbcr else pixels), None

    def close(self) -> None:
        self.handle.close()


class _DropSiblingTileErrors(logging.Filter):
    """zarr decodes a region's tiles as concurrent asyncio tasks. When tiles are corrupt,
    the first error is raised (and reported once, as a SlideError naming the region), but
    the sibling tasks' errors are never retrieved and asyncio logs each one with a full
    traceback when it is garbage-collected: hundreds of traceback lines on stderr for an
    expected error. Drop exactly those records (errors raised inside the TIFF decoders);
    `_drain_zarr_reads` lets the siblings still pending finish before the error goes up."""

    DECODERS = ("tifffile", "imagecodecs", "tiffslide")

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in str(record.msg):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        tb = exc.__traceback__ if exc is not None else None
        while tb is not None:
            if any(name in tb.tb_frame.f_code.co_filename for name in self.DECODERS):
                return False
            tb = tb.tb_next
        return True


logging.getLogger("asyncio").addFilter(_DropSiblingTileErrors())


def _drain_zarr_reads(timeout: float = 30.0) -> None:
    """Wait for the tile reads zarr still runs after one failed (else they are destroyed
    pending at exit, each printing a traceback)."""
    try:
        import asyncio

        from zarr.core import sync

        loop = sync.loop[0]
        if loop is None or not loop.is_running():
            return

        async def drain() -> None:
            me = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not me]
            if others:
                await asyncio.wait(others, timeout=timeout)

        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout + 1)
    except Exception:  # best effort: never hide the read error itself
        pass


_quiet = threading.local()


class _QuietTifffile(logging.Filter):
    """tifffile logs what it finds wrong in a broken file, then raises (or we refuse the
    file): the error we report is the message, so its log lines are noise on stderr. Drops
    them only in a thread inside `tifffile_quiet()` (a logger-level swap would race with
    other threads and, set as an attribute, is ignored by logging's level cache)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "depth", 0)


logging.getLogger("tifffile").addFilter(_QuietTifffile())


@contextmanager
def tifffile_quiet() -> Iterator[None]:
    """tifffile's log lines dropped in this thread while inside (see `_QuietTifffile`)."""
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet.depth -= 1


def _open_tiffslide(path: str) -> tuple[Any, Any]:
    """tiffslide's slide of `path`, and the fsspec file it reads an http(s) slide through
    (None for others), which tiffslide leaves open; its server is asked first whether it
    serves byte ranges (`wsi.http_file`)."""
    import tiffslide

    if not is_http_url(path):
        return tiffslide.TiffSlide(path, storage_options=url_storage_options(path)), None
    file, name = http_slide_file(path)
    try:
        return tiffslide.TiffSlide(file, tifffile_options={"name": name}), file
    except BaseException:
        file.close()
        raise


class TiffSlideBackend:
    """tiffslide: TIFF family incl. OME-TIFF, and fsspec URLs (s3://, file://, ...)."""

    name: ClassVar[str] = "tiffslide"
    reads_urls: ClassVar[bool] = True

    def __init__(self, path: str) -> None:
        with tifffile_quiet():
            self.handle, self._file = _open_tiffslide(path)
            try:
                if self.handle.level_count == 0:
                    raise ValueError("the TIFF holds no image pages (truncated?)")
                self._check_image_data()
            except Exception:
                self.close()
                raise

    def _check_image_data(self) -> None:
        """Refuse levels whose tile offsets are lost or point past the end of the file.

        tifffile reads such pages as zeros without an error, so a truncated slide would
        otherwise give a black image and plausible-looking outputs.
        """
        size = int(self.handle.ts_tifffile.filehandle.size)
        for i, level in enumerate(self._series().levels):
            for page in level.pages:
                if page is None:
                    continue
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size == 0 or offsets.shape != counts.shape:
                    raise ValueError(f"level {i} has no tile offsets (truncated TIFF directory)")
                end = int((offsets + counts).max())
                if end > size:
                    raise ValueError(
                        f"level {i} needs {end} bytes but the file has {size} (truncated)"
                    )

    def _series(self) -> Any:
        """The tifffile series tiffslide reads (tifffile's TiffPageSeries)."""
        tf = self.handle.ts_tifffile
        return tf.series[int(self.handle.properties.get("tiffslide.series-index") or 0)]

    def meta(self) -> SlideMeta:
        with tifffile_quiet():
            return self._meta()

    def _meta(self) -> SlideMeta:
        h = self.handle
        p = {k: v for k, v in h.properties.items() if v is not None}
        vendor = p.get("tiffslide.vendor")
        ome = bool(getattr(h.ts_tifffile, "is_ome", False))
        if vendor is None and ome:
            vendor = "ome"
        mpp = _mpp(p.get("tiffslide.mpp-x"), p.get("tiffslide.mpp-y"))
        if mpp is None and ome:  # tiffslide reads the resolution tags only
            mpp = ome_pixel_size(h.ts_tifffile.ome_metadata)
        return SlideMeta(
            vendor=vendor,
            level_dimensions=tuple((int(d[0]), int(d[1])) for d in h.level_dimensions),
            level_downsamples=tuple(float(d) for d in h.level_downsamples),
            mpp=mpp,
            objective_power=_num(p.get("tiffslide.objective-power")),
            associated_images=tuple(sorted(h.associated_images)),
            bounds_offset=(
                int(_num(p.get("tiffslide.bounds-x")) or 0),
                int(_num(p.get("tiffslide.bounds-y")) or 0),
            ),
            tile_sizes=tuple(_tile(p, "tiffslide", i) for i in range(h.level_count)),
            properties={k: str(v) for k, v in p.items()},
            sample_dtype=str(self._series().dtype),
        )

    def read(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels (zero padded by tiffslide) and the mask of pixels inside the level."""
        # tiffslide's own level-0 -> level transform (int() truncation), then bounds
        ds = self.handle.level_downsamples[level]
        x0, y0 = int(location[0] / ds), int(location[1] / ds)
        lw, lh = self.handle.level_dimensions[level]
        xs = np.arange(x0, x0 + size[0])
        ys = np.arange(y0, y0 + size[1])
        inside = ((ys >= 0) & (ys < lh))[:, None] & ((xs >= 0) & (xs < lw))[None, :]
        if not inside.any():  # nothing to decode (and tiffslide would warn about it)
            return np.zeros((size[1], size[0], 3), np.uint8), inside
        try:
            arr = np.asarray(self.handle.read_region(location, level, size, as_array=True))
        except Exception:
            _drain_zarr_reads()
            raise
        if arr.ndim == 2:
            arr = arr[..., None]
        return to_uint8(arr), inside  # as openslide reads it (`wsi.samples`)

    def close(self) -> None:
        try:
            self.handle.close()
        finally:
            if self._file is not None:
                self._file.close()


class SlideReader(Protocol):
    """What `Slide` asks of a backend: its facts once, then pixels, then close. `name` is
    its registry key and `--backend` choice; `reads_urls`: it opens fsspec URLs (s3://,
    file://, ...), not only local files."""

    name: ClassVar[str]
    reads_urls: ClassVar[bool]

    def __init__(self, path: str) -> None: ...

    def meta(self) -> SlideMeta: ...

    def read(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray | None]: ...

    def close(self) -> None: ...


# The backends, one line each, in the order `open_slide(..., backend="auto")` tries them
# (openslide first: it knows every vendor format; tiffslide for OME-TIFF, unusual TIFFs and
# URLs).
BACKENDS: dict[str, type[SlideReader]] = {
    backend.name: backend
    for backend in (
        OpenSlideBackend,
        TiffSlideBackend,
    )
}


def backend_choices() -> tuple[str, ...]:
    """What `--backend` accepts: auto, then every registered backend."""
    return ("auto", *BACKENDS)


def url_backends() -> tuple[str, ...]:
    """The registered backends that open URLs, in `auto`'s order."""
    return tuple(name for name, backend in BACKENDS.items() if backend.reads_urls)
