"""The run policy's read side: which device reads a slide's tiles, how many decoder
processes decode them, how many writer threads finish the chunks and how many processes
trace their polygons.

Pure functions of the options, the machine and what the run knows of its slide
(`ReadFacts`), called by `pipeline.run_policy.decide`, which records each `Decision` with
its reason in summary.json (`run_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from wsi_segment.pipeline.machine import Gpu, Machine
from wsi_segment.pipeline.params import SegmentParams

T = TypeVar("T")
JpegDecoder = Literal["nvjpeg", "libjpeg"]  # = pipeline.inference.device_tiles.Decoder

GPU, CPU = "gpu", "cpu"  # reads on the device (the device read path), or on the host
WRITERS_MAX = 4
DECODERS_MAX = 16

# why the host reads the tiles (summary.json run_stats.read_device_reason, as before)
NOT_CUDA = "the model is not on a CUDA device"
RGB_CODED = (
    "RGB-coded JPEG tiles (Aperio) decode with libjpeg, faster in the decoder processes "
    "than in one reader thread"
)
NO_NVJPEG = "the GPU has no nvJPEG (a CPU build of torchvision): libjpeg in one reader thread"
ASKED_CPU = "--read-device cpu"
NOT_EXAMINED = "the slide's JPEG tiles were not examined"
DAEMONIC = "a daemonic Dask worker may not start processes: its reader thread reads"


@dataclass(frozen=True)
class Decision(Generic[T]):
    """One decision and why it was made."""

    value: T
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class ReadFacts:
    """The slide's read level as the device read path sees it (`read_sources.slide_reads`)."""

    unsupported: str = ""  # why the device path cannot serve it; "": it can
    ycbcr: bool = False  # the JPEG header states YCbCr, so nvJPEG decodes its colours right


def read_device_decision(
    options: SegmentParams, cuda: bool, gpu: Gpu | None, reads: ReadFacts | None
) -> Decision[str]:
    """GPU (reason: its JPEG decoder) where `--read-device` and the slide allow the device
    read path: on `auto` only for a model on CUDA and tiles nvJPEG decodes."""
    asked = options.read_device
    if asked == CPU:
        return Decision(CPU, ASKED_CPU)
    if asked != GPU and not cuda:
        return Decision(CPU, NOT_CUDA)
    if reads is None:
        return Decision(CPU, NOT_EXAMINED)
    if reads.unsupported:
        return Decision(CPU, reads.unsupported)
    nvjpeg = gpu is not None and gpu.nvjpeg and reads.ycbcr
    if asked != GPU and not nvjpeg:
        return Decision(CPU, RGB_CODED if not reads.ycbcr else NO_NVJPEG)
    return Decision(GPU, "nvjpeg" if nvjpeg else "libjpeg")


def decoders_decision(
    options: SegmentParams,
    machine: Machine,
    cuda: bool,
    device_reads: bool,
    band: bool,
    at_once: int,
) -> Decision[int]:
    if device_reads:
        return Decision(0, "the device read path decodes in its reader thread")
    if options.decoders is not None:
        return Decision(options.decoders, f"asked for (--decoders {options.decoders})")
    if not cuda:
        return Decision(0, "a CPU run: the model bounds it, its reader thread keeps up")
    # Half the cores: the other half finish chunks (writers) and feed the GPU. On an H200
    # with 16 cores, 8 decoders and 4 writers ran the inference stage in 3.9 s where 15 and
    # 1 took 4.8 s: one writer could not finish what 15 decoders read (RESULTS.md).
    whole = max(1, min(DECODERS_MAX, machine.cores // 2))
    share = max(1, whole // at_once)
    why = f"a GPU: half the cores, at most {DECODERS_MAX} (the rest finish chunks)"
    if at_once > 1:
        what = "bands on this worker's machine" if band else "slides in flight"
        why += f", shared by {at_once} {what}"
    return Decision(share, why)


def writers_decision(
    options: SegmentParams, cores: int, decoders: int, band: bool
) -> Decision[int]:
    if options.writers is not None and not band:
        return Decision(options.writers, f"asked for (--writers {options.writers})")
    n = max(1, min(WRITERS_MAX, cores - decoders))
    return Decision(n, f"the cores the decoders leave, 1 to {WRITERS_MAX}")


def polygon_processes_decision(
    options: SegmentParams, cuda: bool, writers: int, band: bool, daemonic: bool
) -> Decision[int]:
    if options.polygon_processes is not None and not band:
        asked = options.polygon_processes
        return Decision(asked, f"asked for (--polygon-processes {asked})")
    if not cuda:
        return Decision(0, "a CPU run: the model has the cores, the writers trace in their threads")
    if daemonic:  # the workers are plain subprocesses, but no test runs them in a Dask band
        return Decision(0, "a daemonic Dask worker: the writers trace in their threads")
    # Tracing holds the GIL: on an H200's 16 cores 8 threads traced 1.46x faster than one,
    # 8 processes 7.2x (benchmarks/writer.py), and the writers were a GPU run's limit.
    return Decision(writers, "a GPU: one per writer thread (tracing holds the GIL)")
