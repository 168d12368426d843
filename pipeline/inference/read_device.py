"""Where the engine decodes a slide's tiles: on the model's device, or in processes.

The device read path (`pipeline.inference.reader_thread`) decodes a level's JPEG storage
tiles in batches (nvJPEG on CUDA, libjpeg-turbo on the CPU) and assembles the model tiles on
the model's device in one reader thread: no decoder processes. It serves a slide only where
model pixels are the read level's pixels and `wsi.raw_tiles` hands out the level's streams.
`--read-device` (`SegmentParams.read_device`):

- `cpu`: the decoder processes (or the reader thread), always;
- `gpu`: the device path wherever it serves the slide, on any device (the tests run it on
  the CPU); elsewhere the decoder processes, and the CLI prints why;
- `auto`: the device path only for a model on CUDA and tiles nvJPEG decodes (YCbCr stated in
  the header). RGB-coded tiles (Aperio SVS) stay with libjpeg (`jpeg_batch`: colour), which
  in one reader thread is slower than the decoder processes, so `auto` keeps those.

`prepare` decides before it spawns any decoder process, from model.json's geometry and a
guess of the device (torch is still importing, so nothing here imports it); `infer` settles
the choice with the loaded model (`settle_reads`): a wrong guess costs speed only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from wsi_segment.pipeline.params import SegmentParams, gpu_expected
from wsi_segment.wsi.raw_tiles import JpegTiles, Unsupported, open_jpeg_tiles
from wsi_segment.wsi.region_reader import choose_level, same_pixels

GPU, CPU = "gpu", "cpu"  # the device read path; the decoder processes or threads
NOT_CUDA = "the model is not on a CUDA device"
RGB_CODED = (
    "RGB-coded JPEG tiles (Aperio) decode with libjpeg, faster in the decoder processes "
    "than in one reader thread"
)
ASKED_CPU = "--read-device cpu"
NO_BANDS = "a Dask cluster's bands choose on their workers, and none ran (no tissue)"

LevelKey = tuple[int, float]  # (read level, level-0 px per model px) a choice was made for


class LevelSlide(Protocol):
    """What the choice reads of a slide (wsi.slide.Slide satisfies it)."""

    @property
    def level_downsamples(self) -> tuple[float, ...]: ...
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...
    @property
    def bounds_offset(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class ReadChoice:
    """How a run's chunks are read, and why (summary.json `run_stats`)."""

    device: str  # GPU or CPU
    reason: str  # GPU: the decoder ("nvjpeg" / "libjpeg"); CPU: why not the device path
    cuda: bool  # whether the model was taken to be on CUDA when this was decided
    level: LevelKey | None = None  # what it was decided for (None: no level was looked at)
    tiles: JpegTiles | None = None  # GPU: the read level's tiles

    def report(self) -> dict[str, str]:
        return {"read_device": self.device, "read_device_reason": self.reason}


def read_level(slide: LevelSlide, slide_mpp: float, model_mpp: float) -> LevelKey:
    """The level chunks are read from and level-0 px per model px, as
    `wsi.tiling.plan_chunks` plans them (known before tissue detection)."""
    level0_per_model = model_mpp / slide_mpp
    return choose_level(tuple(slide.level_downsamples), level0_per_model), level0_per_model


def jpeg_level(slide_path: str, slide: LevelSlide, key: LevelKey) -> JpegTiles | Unsupported:
    """The read level's JPEG tiles where the device path can serve them, or why not."""
    level, level0_per_model = key
    ds = float(slide.level_downsamples[level])
    if not same_pixels(level0_per_model, ds):
        return Unsupported(
            f"model pixels are not level {level}'s pixels "
            f"({level0_per_model:g} level-0 px per model px, level downsample {ds:g}):"
            " resampling runs on the CPU"
        )
    if tuple(slide.bounds_offset) != (0, 0):
        return Unsupported("the slide has a bounds offset")
    return open_jpeg_tiles(slide_path, level, slide.level_dimensions[level])


def choose_reads(
    requested: str, cuda: bool, slide_path: str, slide: LevelSlide, key: LevelKey
) -> ReadChoice:
    """The choice for `requested` ("auto", "cpu", "gpu") with the model on CUDA or not."""
    if requested == CPU:
        return ReadChoice(CPU, ASKED_CPU, cuda)
    if requested != GPU and not cuda:
        return ReadChoice(CPU, NOT_CUDA, cuda)
    tiles = jpeg_level(slide_path, slide, key)
    if isinstance(tiles, Unsupported):
        return ReadChoice(CPU, tiles.reason, cuda, key)
    decoder = "nvjpeg" if cuda and tiles.colour_safe_anywhere else "libjpeg"
    if requested != GPU and decoder != "nvjpeg":
        return ReadChoice(CPU, RGB_CODED, cuda, key)
    return ReadChoice(GPU, decoder, cuda, key, tiles)


def settle_reads(
    choice: ReadChoice | None,
    requested: str,
    cuda: bool,
    key: LevelKey,
    decide: Callable[[], ReadChoice],
) -> ReadChoice:
    """A local run's choice once the model has loaded: `choice` (made in `prepare`) when it
    was made for this device and read level `key`, else `decide()` again. (A Dask cluster's
    bands choose on their workers: `band_task.band_source`.)"""
    if choice is not None and choice.cuda == cuda and choice.level in (None, key):
        return choice
    return decide()


def plan_reads(
    slide_path: str,
    slide: LevelSlide,
    params: SegmentParams,
    slide_mpp: float,
    model_mpp: float,
) -> ReadChoice:
    """`prepare`'s choice, before the model has loaded: a GPU is guessed as for the chunk
    size (`pipeline.params.gpu_expected`)."""
    key = read_level(slide, slide_mpp, model_mpp)
    cuda = gpu_expected(params.device)
    return choose_reads(params.read_device, cuda, slide_path, slide, key)
