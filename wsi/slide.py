"""One `Slide` type over openslide and tiffslide.

Why a wrapper: the rest of the pipeline must not care which library decoded a slide,
must get white (not black) outside the tissue scan, must find mpp in one place (with the
user's override winning), and must be able to ship a slide to Dask worker processes
(pickling keeps the path and re-opens lazily on the worker).

Transient I/O errors (a network file system or object store hiccup) are retried: at most
`READ_ATTEMPTS` tries with `RETRY_DELAYS_S` between them (under 1 s in all), each on a
freshly opened reader, then one `SlideError` naming the slide, the region and the attempts.
Which errors are transient is `wsi.retries.is_transient` (I/O errors, minus those that
never heal by waiting: missing file, permission denied, a full disk); decode errors of
corrupt data (openslide's, tifffile's, imagecodecs') would fail identically, so they are
reported at once. Running out of file descriptors is neither: it is `TooManyOpenFiles`
with its fix, at once, never a damaged slide (`wsi_segment.open_files`), and opening a
slide does not then try the next backend (which would read it otherwise than its runs do).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from functools import partial
from typing import Any

import numpy as np

from wsi_segment.address_space import ran_out
from wsi_segment.errors import ConfigError, MppMissingError, SlideError
from wsi_segment.open_files import raise_if_exhausted
from wsi_segment.wsi.backends import (
    BACKENDS,
    SlideMeta,
    SlideReader,
    backend_choices,
    url_backends,
)
from wsi_segment.wsi.box_mean import box_mean
from wsi_segment.wsi.mpp import MPP_RANGE, mpp_problem
from wsi_segment.wsi.retries import READ_ATTEMPTS, is_transient, with_retries
from wsi_segment.wsi.samples import check_samples
from wsi_segment.wsi.shown_path import shown_slide_path, shown_text
from wsi_segment.wsi.slide_path import local_slide_file, refuse_url_password

log = logging.getLogger(__name__)


def _is_url(path: str) -> bool:
    return "://" in path and not os.path.exists(path)  # exists: False on any OSError


class Slide:
    """An open whole-slide image; see docs/architecture.md for where it sits."""

    def __init__(self, path: str, backend: str, meta: SlideMeta, mpp_override: float | None):
        self.path = path
        self.backend = backend
        self._meta = meta
        self._mpp_override = mpp_override
        self._reader: SlideReader | None = None
        self._lock = threading.Lock()

    # -- metadata ---------------------------------------------------------------
    @property
    def shown_path(self) -> str:
        """The path as messages and `info` show it (`shown_slide_path`: a URL without its
        query); the slide is read by `path`."""
        return shown_slide_path(self.path)

    @property
    def vendor(self) -> str | None:
        return self._meta.vendor

    @property
    def level_count(self) -> int:
        return len(self._meta.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._meta.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._meta.level_downsamples

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._meta.level_dimensions[0]

    @property
    def mpp(self) -> tuple[float, float] | None:
        """(x, y) um per level-0 pixel; the override wins over the file's metadata."""
        if self._mpp_override is not None:
            return (self._mpp_override, self._mpp_override)
        return self._meta.mpp if self._recorded_mpp_plausible() else None

    @property
    def mpp_source(self) -> str | None:
        """Where `mpp` comes from: "override" (--mpp), "metadata" (the file) or None."""
        if self._mpp_override is not None:
            return "override"
        return "metadata" if self._recorded_mpp_plausible() else None

    def _recorded_mpp_plausible(self) -> bool:
        """Whether the file records a pixel size in the range any slide may be given
        (`wsi.mpp.MPP_RANGE`). Outside it the file is wrong, not the scan: a generic TIFF
        writer's default 72/96 dpi (boxes.tiff: 352.8 um/px), or a resolution in the wrong
        unit (1e-5 um/px), which would plan a slide of petabytes or find no tissue."""
        recorded = self._meta.mpp
        return recorded is not None and all(mpp_problem(v) is None for v in recorded)

    @property
    def objective_power(self) -> float | None:
        return self._meta.objective_power

    @property
    def associated_images(self) -> tuple[str, ...]:
        return self._meta.associated_images

    @property
    def bounds_offset(self) -> tuple[int, int]:
        return self._meta.bounds_offset

    @property
    def properties(self) -> dict[str, Any]:
        return self._meta.properties

    def require_mpp(self) -> tuple[float, float]:
        """mpp, or one clear error: physical sizes are needed and nothing says them."""
        if self.mpp is None:
            recorded = self._meta.mpp
            said = (
                "does not record its pixel size (microns per pixel)"
                if recorded is None
                else f"records a pixel size of {recorded[0]:g} x {recorded[1]:g} um/px, which "
                f"no slide has (outside [{MPP_RANGE[0]:g}, {MPP_RANGE[1]:g}]: a writer's "
                "default dpi, or a wrong unit)"
            )
            raise MppMissingError(
                f"{self.shown_path}: the slide {said}; pass it with --mpp (e.g. --mpp 0.25 for "
                "40x, 0.5 for 20x)"
            )
        return self.mpp

    def storage_tile_size(self, level: int) -> tuple[int, int] | None:
        """(w, h) of the stored tiles of `level`, so callers can read aligned blocks."""
        self._check_level(level)
        return self._meta.tile_sizes[level]

    def info(self) -> dict[str, Any]:
        """The JSON object `wsi-segment info` prints."""
        return {
            "path": self.shown_path,
            "backend": self.backend,
            "vendor": self.vendor,
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": list(self.mpp) if self.mpp is not None else None,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "associated_images": list(self.associated_images),
            "bounds_offset": list(self.bounds_offset),
            "tile_size": [list(t) if t else None for t in self._meta.tile_sizes],
        }

    # -- pixels -----------------------------------------------------------------
    def _open_reader(self) -> SlideReader:
        """The shared reader, opened on first use (raises the backend's own error)."""
        with self._lock:
            if self._reader is None:
                self._reader = BACKENDS[self.backend](self.path)
            return self._reader

    def _drop_reader(self, reader: SlideReader | None) -> None:
        """Forget a reader after an error: an openslide handle fails every later call once
        one read failed, and a network file may be stale. Other threads may still be using
        it, so it is not closed here; it closes when the last reference goes."""
        with self._lock:
            if reader is not None and self._reader is reader:
                self._reader = None

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ConfigError(
                f"{self.shown_path}: level {level} out of range 0..{self.level_count - 1}"
            )

    def read_region(
        self, location_level0: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `size` (level px) at level-0 `location`; white outside."""
        self._check_level(level)
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ConfigError(f"{self.shown_path}: region size must be positive, got {size}")
        loc = (int(location_level0[0]), int(location_level0[1]))
        where = f"region {loc} size {(w, h)} at level {level}"
        start = time.monotonic()

        def attempt() -> tuple[np.ndarray, np.ndarray | None]:
            reader = self._open_reader()
            try:
                return reader.read(loc, level, (w, h))
            except Exception:
                self._drop_reader(reader)
                raise

        try:
            arr, inside = with_retries(attempt, f"{self.shown_path}: reading {where}")
        except SlideError:  # a reader reopened found what its open would (NoByteRanges)
            raise
        except Exception as exc:
            raise_if_exhausted(f"{self.shown_path}: reading {where}", exc, probe=True)
            if ran_out(exc):  # memory, not the file (`address_space.memory_named` says it)
                raise
            cause = shown_text(f"{type(exc).__name__}: {exc}")  # a library's quotes the URL
            if is_transient(exc):
                raise SlideError(
                    f"{self.shown_path}: cannot read {where}: {READ_ATTEMPTS} attempts in "
                    f"{time.monotonic() - start:.1f} s failed, the last with {cause}; check the "
                    "file system or network connection and run again"
                ) from exc
            hint = (
                "check that the file is still there and readable"
                if isinstance(exc, OSError)
                else "the file may be truncated or corrupt; copy it again from its source "
                "or re-export it from the scanner software"
            )
            raise SlideError(f"{self.shown_path}: cannot read {where} ({cause}); {hint}") from exc
        return _to_white_rgb(arr, inside)

    def thumbnail_level(self, max_size: int) -> int:
        """The level `thumbnail(max_size)` decodes: the coarsest with >= max_size px."""
        return max(
            (i for i, (w, h) in enumerate(self.level_dimensions) if max(w, h) >= max_size),
            key=lambda i: self.level_downsamples[i],
            default=0,
        )

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """RGB image whose longer side is <= max_size, and its downsample vs level 0.

        Reads the coarsest level that still has >= max_size px (never a finer one) and
        averages k x k blocks (`box_mean`, edge blocks completed with white), in
        storage-tile-aligned pieces so no tile is decoded twice and
        even a single-level 100k-pixel slide never sits in memory.
        """
        max_size = max(1, int(max_size))
        level = self.thumbnail_level(max_size)
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        k = max(1, math.ceil(max(lw, lh) / max_size))
        tw, th = math.ceil(lw / k), math.ceil(lh / k)
        out = np.empty((th, tw, 3), np.uint8)
        tile = self.storage_tile_size(level) or (1, 1)
        bx, by = (_block(k, t) for t in tile)  # level px per read: multiples of k and tile
        for y in range(0, lh, by):
            for x in range(0, lw, bx):
                bw, bh = min(bx, lw - x), min(by, lh - y)
                px = box_mean(
                    self.read_region((round(x * lds), round(y * lds)), level, (bw, bh)), k
                )
                out[y // k : y // k + px.shape[0], x // k : x // k + px.shape[1]] = px
        return out, lds * k

    # -- lifecycle --------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "backend": self.backend,
            "meta": self._meta,
            "mpp_override": self._mpp_override,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        Slide.__init__(self, state["path"], state["backend"], state["meta"], state["mpp_override"])

    def __repr__(self) -> str:
        shown = self.shown_path  # a repr lands in tracebacks and logs
        return f"Slide({shown!r}, backend={self.backend!r}, dims={self.dimensions}, mpp={self.mpp})"


def _block(k: int, tile: int, target: int = 2048) -> int:
    """About `target` px, a multiple of k and (when not too large) of the storage tile."""
    unit = math.lcm(k, tile) if math.lcm(k, tile) <= target else k
    return max(1, target // unit) * unit


def _to_white_rgb(arr: np.ndarray, inside: np.ndarray | None) -> np.ndarray:
    """Composite RGBA (or grey and alpha) over white; grey to RGB; pixels outside the slide
    become 255.

    Opaque regions (alpha all 255, the usual case inside a scan) skip the blend, which
    would give the same values at the cost of two widened copies.
    """
    if arr.shape[2] == 2:  # grey and alpha (tiffslide): as RGBA
        arr = arr[..., [0, 0, 0, 1]]
    if arr.shape[2] == 1:
        rgb = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] >= 4 and arr[..., 3].min() == 255:
        rgb = np.ascontiguousarray(arr[..., :3])
    elif arr.shape[2] >= 4:
        a = arr[..., 3:4].astype(np.uint16)
        rgb = arr[..., :3].astype(np.uint16)
        rgb = ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    else:
        rgb = np.ascontiguousarray(arr[..., :3])
    if inside is not None and not inside.all():
        rgb = rgb.copy()
        rgb[~inside] = 255
    return rgb


def _one_of(names: tuple[str, ...]) -> str:
    """`a, b or c`: the names a message offers."""
    return " or ".join(filter(None, (", ".join(names[:-1]), names[-1])))


def open_slide(
    path_or_url: str | os.PathLike[str], backend: str = "auto", mpp: float | None = None
) -> Slide:
    """Open a slide with `backend` (auto, or a name of `wsi.backends.BACKENDS`); one clear
    error else.

    auto: every backend in the registry's order, the first that opens it wins (openslide
    knows every vendor format, tiffslide is the fallback for OME-TIFF and unusual TIFFs);
    URLs (s3://, file://, ...) go to the backends that speak fsspec (`reads_urls`).
    """
    path = str(path_or_url)
    if backend not in backend_choices():
        raise ConfigError(f"unknown slide backend {backend!r}; use {_one_of(backend_choices())}")
    if mpp is not None and (problem := mpp_problem(mpp)) is not None:
        raise ConfigError(f"--mpp {problem}")
    if _is_url(path):
        refuse_url_password(path)
        order = _url_backend_order(path, backend)
    else:
        path = local_slide_file(path)
        order = list(BACKENDS) if backend == "auto" else [backend]
    return _open_with_first(path, order, mpp)


def _url_backend_order(url: str, backend: str) -> list[str]:
    """The backends to try on a URL: only those that speak fsspec can read it."""
    if backend != "auto" and backend not in url_backends():
        raise ConfigError(
            f"{shown_slide_path(url)}: {backend} reads local files only; use --backend "
            f"{_one_of(url_backends())}"
        )
    return list(url_backends()) if backend == "auto" else [backend]


def _open_with_first(path: str, order: list[str], mpp: float | None) -> Slide:
    """The slide as the first backend of `order` that opens it with image levels sees it;
    else one error with every backend's reason and the fix for a URL or a local file."""
    reasons = []
    for name in order:
        try:
            reader = with_retries(partial(BACKENDS[name], path), f"opening {path}")
        except SlideError:  # the backend's own diagnosis (NoByteRanges), with its fix
            raise
        except Exception as exc:  # out of descriptors: no other backend may take over
            raise_if_exhausted(f"{shown_slide_path(path)}: opening the slide", exc, probe=True)
            reasons.append(f"{name}: {type(exc).__name__}: {exc}".rstrip(": "))
            continue
        try:
            meta = reader.meta()
        finally:
            reader.close()
        if not meta.level_dimensions or min(meta.level_dimensions[0]) <= 0:
            reasons.append(f"{name}: no image levels")
            continue
        check_samples(shown_slide_path(path), meta.sample_dtype)  # nor does another reader
        return Slide(path, name, meta, mpp)
    fix = (
        "check the URL, that it can be reached and any credentials it needs (for s3://, "
        "the AWS credentials); else the file may be truncated, corrupt or of an unsupported "
        "format"
        if _is_url(path)
        else "it may be truncated, corrupt or of an unsupported format; copy it again from "
        "its source, or convert it to a pyramidal TIFF / OME-TIFF"
    )
    # the reasons are the libraries' words, which may quote the URL whole
    raise SlideError(shown_text(f"{path}: not a readable slide ({'; '.join(reasons)}); {fix}"))
